"""Whether a fitted law can be used, in words, next to the published values it should be compared with.

Three verdicts (issue 19): **usable** (the 95% interval is narrow enough and the estimate lies in the published
range), **too noisy at this scale** (the interval is wider than a stated half-width, the fit ended on a bound of
its search, or there is no interval), **outside the published range** (narrow, but elsewhere). Pure functions of
numbers: the demo and anything else that reports laws call them; nothing here fits, reads or imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

USABLE = "usable"
NOISY = "too noisy at this scale"
OUTSIDE = "outside the published range"
VERDICTS = (USABLE, NOISY, OUTSIDE)

MAX_HALF_WIDTH = 0.15
"""Largest half-width of a 95% interval on an exponent that still tells the published values apart (issue 19)."""


@dataclass(frozen=True)
class Published:
    """A published value and the range the literature spans, with the sources."""

    value: Optional[float]
    lo: float
    hi: float
    source: str

    def text(self) -> str:
        if self.value is None:
            return self.source
        return f"{self.value:+.2f} (range {self.lo:+.2f} to {self.hi:+.2f})"


# Published exponents, with their papers.
ISOFLOP_A = Published(0.50, 0.45, 0.55, "Chinchilla 0.46-0.50, Besiroglu et al. 0.51, Llama 3 0.53")
"""a in N*(C) ∝ C^a: Hoffmann et al. 2022 approaches 1-3 give 0.50, 0.49, 0.46; Besiroglu et al. 2024's refit
0.51; Llama 3 (2024) 0.53; Kaplan et al. 2020's 0.73 came from runs stopped early and is left out."""
LR_N = Published(-0.713, -0.85, -0.55, "Step Law, Li et al. 2025")
"""lr* = 1.79·N^−0.713·D^0.307 (Li et al. 2025)."""
LR_D = Published(0.307, 0.15, 0.45, "Step Law, Li et al. 2025")
B_D = Published(0.571, 0.40, 0.75, "Step Law 0.571; DeepSeek 0.33 per C")
"""B* = 0.58·D^0.571 tokens (Li et al. 2025); DeepSeek LLM 2024: B* ∝ C^0.327."""
CBS_SHAPE = Published(None, 0.0, math.inf, "rises, then flattens (Merrill et al. 2025)")


@dataclass(frozen=True)
class Verdict:
    law: str
    """What was fitted, e.g. "IsoFLOP: N* ∝ C^a"."""
    estimate: float
    lo: float
    hi: float
    published: Published
    verdict: str
    why: str

    def estimate_text(self) -> str:
        def f(x: float) -> str:
            return f"{x:+.2f}" if math.isfinite(x) else "n/a"

        return f"{f(self.estimate)} [{f(self.lo)}, {f(self.hi)}]"


def _finite(*xs: float) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def judge(law: str, estimate: float, lo: float, hi: float, published: Published, at_bound: Sequence[str] = (),
          max_half_width: float = MAX_HALF_WIDTH) -> Verdict:
    """The verdict on an exponent estimated with a 95% interval [lo, hi]."""
    if at_bound:
        verdict, why = NOISY, f"{', '.join(at_bound)} ended on a bound of the search: the data do not pin the law down"
    elif not _finite(estimate, lo, hi):
        verdict, why = NOISY, "no finite estimate or interval"
    elif (hi - lo) / 2 > max_half_width:
        verdict, why = NOISY, f"interval ±{(hi - lo) / 2:.2f}, wider than ±{max_half_width:.2f}"
    elif not published.lo <= estimate <= published.hi:
        verdict, why = OUTSIDE, f"interval ±{(hi - lo) / 2:.2f}, but the estimate lies outside the published range"
    else:
        verdict, why = USABLE, f"interval ±{(hi - lo) / 2:.2f}, estimate within the published range"
    return Verdict(law, estimate, lo, hi, published, verdict, why)


def judge_cbs(exponent: float, lo: float, hi: float, best_form: str, plateau_within: bool,
              at_bound: Sequence[str] = ()) -> Verdict:
    """CBS(D): usable when it rises (the power law's exponent interval above 0), best if it also flattens (the
    rise-then-plateau form wins on AIC with its plateau inside the measured D); noisy when the interval spans 0 or
    the fit is at a bound; outside the literature when it falls."""
    law = "CBS(D) ∝ D^exp"
    if at_bound:
        return Verdict(law, exponent, lo, hi, CBS_SHAPE, NOISY, f"{', '.join(at_bound)} ended on a bound")
    if not _finite(exponent, lo, hi) or lo <= 0 <= hi:
        return Verdict(law, exponent, lo, hi, CBS_SHAPE, NOISY, "the interval of the exponent includes 0: "
                       "no rise is resolved")
    if hi < 0:
        return Verdict(law, exponent, lo, hi, CBS_SHAPE, OUTSIDE, "the CBS falls with D")
    shape = ("rises, then flattens inside the measured D" if best_form == "saturating" and plateau_within
             else "rises; no plateau within the measured D")
    return Verdict(law, exponent, lo, hi, CBS_SHAPE, USABLE, shape)


def ratio_interval(alpha: Sequence[float], beta: Sequence[float]) -> tuple[float, float]:
    """95% percentile interval of a = β/(α+β) (approach 3's N* ∝ C^a) over bootstrap draws of α and β."""
    pairs = sorted(b / (a + b) for a, b in zip(alpha, beta) if _finite(a, b) and a + b > 0)
    if len(pairs) < 2:
        return math.nan, math.nan
    return _quantile(pairs, 0.025), _quantile(pairs, 0.975)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def page(sections: Sequence[tuple[str, Sequence[Verdict]]]) -> list[str]:
    """The closing page: per section (e.g. "this demo", "Chinchilla's published points") one block of laws, each
    as "law  estimate [95% CI]  published" then "-> verdict: why"."""
    width = max((len(v.law) for _, vs in sections for v in vs), default=10)
    lines: list[str] = []
    for title, verdicts in sections:
        lines.append(title)
        for v in verdicts:
            lines.append(f"  {v.law.ljust(width)}  {v.estimate_text():<22} published {v.published.text()}")
            lines.append(f"  {' ' * width}  -> {v.verdict}: {v.why}")
    return lines


def sources(verdicts: Sequence[Verdict]) -> list[str]:
    """Where each published value comes from, once per source."""
    seen = dict.fromkeys(v.published.source for v in verdicts if v.published.value is not None)
    return [f"published: {'; '.join(seen)}"] if seen else []
