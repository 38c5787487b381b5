"""Sweep designs: pure generators of run specifications with deterministic names.

A design turns a size ladder and a few numbers into a list of `RunSpec`s: the Hydra overrides of each run, a name
that says what the run is (``isoflop-C3e14-N1.2e6-B16k-s0``) and tags that group runs for analysis. Names depend
only on the design's inputs, so a re-run of the same sweep finds its runs again and skips the finished ones.

Conventions (design §4): N is Kaplan's non-embedding parameter count (`lab.flops.non_embedding_params`); B is the
global batch in tokens; in names ``k`` means 1024 tokens. C is the compute of the laws, 6·N·D
(`tracking.record.compute`): an IsoFLOP run trains D = C / (6·N) tokens, so its recorded C param, its summary's C
and the loader's C all equal its budget. Each IsoFLOP run is also tagged ``budget=<C>`` (its nominal budget, which
rounding D to whole tokens misses by < 1e-6), so analysis groups a profile exactly.

Sizes are model.size dials (the ladder of `lab.model.size_ladder`) or explicit shapes {d_model, n_layers, n_heads}
for steps finer than the ladder's 8x between sizes 1 and 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from lab.config import BatchConfig, ModelConfig
from tracking.record import Design, Tag, tokens_for_compute


class DesignError(ValueError):
    """A design that cannot produce runs; the message names the design, the parameter and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its deterministic name, its Hydra overrides, and tags recorded on its MLflow run."""

    name: str
    overrides: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    stage: int = 0
    """Runs of stage k start once every run of the stages before k finished (e.g. CBS branches after their
    reference run, sweeps.branches); most designs have one stage."""

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "overrides": list(self.overrides), "tags": dict(self.tags)}
        return {**out, "stage": self.stage} if self.stage else out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        return cls(name=str(d["name"]), overrides=tuple(d["overrides"]), tags=dict(d.get("tags", {})),
                   stage=int(d.get("stage", 0)))


@dataclass(frozen=True)
class Rung:
    """One model size of the ladder: the overrides that select it and N (non-embedding)."""

    label: str
    """``size 3`` (a model.size dial) or ``d_model=48,n_layers=1,n_heads=1`` (an explicit shape), for messages."""
    overrides: tuple[str, ...]
    N: int


Size = Union[int, Mapping[str, int]]
"""A model.size dial (N ≈ 12·32²·size³), or an explicit shape {d_model, n_layers, n_heads} for steps finer than
the ladder's (it grows 8x from size 1 to 2)."""


@dataclass(frozen=True)
class Base:
    """What every run of a design shares, read from the composed training config."""

    rungs: tuple[Rung, ...]
    """The sizes the design draws from, increasing in N."""
    seq_len: int
    batch_sequences: int
    """Global batch in sequences of the base config (designs that do not vary B keep it)."""
    micro_batch: int

    @property
    def B_tokens(self) -> int:
        return self.batch_sequences * self.seq_len

    @classmethod
    def from_config(cls, model: ModelConfig, batch: BatchConfig, sizes: Sequence[Size]) -> Base:
        """The ladder of ``sizes`` with every other model setting taken from ``model``."""
        if model.d_model is not None or model.n_layers is not None or model.n_heads is not None:
            raise DesignError(
                f"designs set the model size themselves, but the base config sets model.d_model={model.d_model}, "
                f"model.n_layers={model.n_layers}, model.n_heads={model.n_heads}; drop those overrides")
        if not sizes:
            raise DesignError("the design has no sizes: give sizes=[1, 2, 3, ...] (model.size dials) or shapes "
                              "{d_model: 48, n_layers: 1, n_heads: 1}")
        rungs = {r.N: r for r in (rung(model, size) for size in sizes)}
        return cls(rungs=tuple(rungs[N] for N in sorted(rungs)), seq_len=model.seq_len,
                   batch_sequences=batch.sequences, micro_batch=batch.micro_batch)


def rung(model: ModelConfig, size: Optional[Size] = None) -> Rung:
    """N and FLOPs per token of ``model`` at ``size`` (default: the model's own size dial or explicit shape)."""
    # torch loads here, not at import: the Hydra plugins import this module to plan a sweep.
    from lab.flops import non_embedding_params
    from lab.model import gpt_config, resolve_size

    if size is None:
        shape, label, overrides = resolve_size(model.size, model.d_model, model.n_layers, model.n_heads), "", ()
    elif isinstance(size, Mapping):
        if set(size) != {"d_model", "n_layers", "n_heads"}:
            raise DesignError(f"size {dict(size)}: give exactly d_model, n_layers and n_heads, or a model.size dial")
        shape = {k: int(v) for k, v in size.items()}
        label = ",".join(f"{k}={shape[k]}" for k in ("d_model", "n_layers", "n_heads"))
        overrides = ("model.size=null", *(f"model.{k}={shape[k]}" for k in ("d_model", "n_layers", "n_heads")))
    else:
        shape, label, overrides = resolve_size(int(size)), f"size {int(size)}", (f"model.size={int(size)}",)
    gpt = gpt_config(model, **shape)
    return Rung(label, overrides, non_embedding_params(gpt))


# ---------------------------------------------------------------------------------------------------- names


def sci(x: float, digits: int = 3) -> str:
    """Compact scientific notation for names: 3e14, 1.26e4, 3e-3 (at most ``digits`` significant digits)."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def tokens_label(B: int) -> str:
    """Batch size in tokens for names: 256, 16k (k = 1024), 2M (M = 1024²), else scientific."""
    for unit, suffix in ((1024 * 1024, "M"), (1024, "k")):
        if B >= unit and B % unit == 0:
            return f"{B // unit}{suffix}"
    return str(B) if B < 1024 else sci(B)


def log_space(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """n values from lo to hi, evenly spaced in log, rounded to 3 significant digits (clean names, exact overrides)."""
    if not (0 < lo <= hi) or n < 1 or (n == 1 and lo != hi):
        raise DesignError(f"log_space(lo={lo}, hi={hi}, n={n}): need 0 < lo <= hi and n >= 1 (n = 1 only if lo == hi)")
    if n == 1:
        return (float(f"{lo:.3g}"),)
    step = (math.log(hi) - math.log(lo)) / (n - 1)
    return tuple(float(f"{math.exp(math.log(lo) + i * step):.3g}") for i in range(n))


def _check_tokens(design: str, D: int, B_tokens: int, what: str) -> None:
    if D < B_tokens:
        raise DesignError(f"{design}: {what} gives D={D} tokens, less than one batch of {B_tokens} tokens "
                          "(batch.sequences x model.seq_len); raise the budget or drop the largest sizes")


def with_seeds(specs: Sequence[RunSpec], seeds: Sequence[int]) -> list[RunSpec]:
    """Repeat every run once per seed: a replicate axis, never searched over. Names always end in -s<seed>, so
    adding seeds later keeps the names of the runs already done."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise DesignError(f"seeds={list(seeds)}: give distinct integers, e.g. seeds=[0, 1, 2]")
    return [RunSpec(f"{s.name}-s{seed}", (*s.overrides, f"seed={seed}"), {**s.tags, Tag.SEED: str(seed)})
            for s in specs for seed in seeds]


def _unique(design: str, specs: list[RunSpec]) -> list[RunSpec]:
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DesignError(f"{design}: two runs share the names {dupes}; the ladder has sizes whose N agree to 3 "
                          "digits or repeated values: drop duplicates from sizes / budgets / multipliers")
    return specs


# -------------------------------------------------------------------------------------------------- designs


def size_tokens_grid(base: Base, tokens_per_param: Sequence[float], seeds: Sequence[int] = (0,)) -> list[RunSpec]:
    """Every ladder size × every tokens-per-parameter multiplier r: D = r·N tokens (Chinchilla's optimum is r ≈ 20,
    Hoffmann et al. 2022). The grid that a loss law L(N, D) is fitted to."""
    specs = []
    for rung in base.rungs:
        for r in tokens_per_param:
            D = round(r * rung.N)
            _check_tokens("grid", D, base.B_tokens, f"{rung.label} with tokens_per_param={r}")
            specs.append(RunSpec(
                f"grid-N{sci(rung.N)}-D{sci(D)}-B{tokens_label(base.B_tokens)}",
                (*rung.overrides, f"budget.tokens={D}"),
                {Tag.DESIGN: Design.GRID, Tag.TOKENS_PER_PARAM: f"{r:g}"}))
    return _unique("grid", with_seeds(specs, seeds))


def chinchilla_N(C: float, tokens_per_param: float = 20.0) -> float:
    """Compute-optimal N*(C) = sqrt(C / (6·r)) from D* = r·N* and C = 6·N*·D*; r = 20 gives Chinchilla's
    sqrt(C/120) (Hoffmann et al. 2022, Table 3)."""
    return math.sqrt(C / (6.0 * tokens_per_param))


def isoflop(base: Base, budgets: Sequence[float], k: int = 5, seeds: Sequence[int] = (0,),
            tokens_per_param: float = 20.0) -> list[RunSpec]:
    """IsoFLOP profiles (Chinchilla approach 2): per budget C, the k ladder sizes centred on the one whose N is
    nearest (in log N) to the expected optimum N*(C) = sqrt(C / (6·tokens_per_param)), each trained on
    D = C / (6·N) tokens (module docstring). The window slides inward at the ends of the ladder, so every
    budget gets k sizes. Tiny, short runs favour more tokens per parameter than Chinchilla's 20: raise
    tokens_per_param to centre the window on smaller models."""
    if not 1 <= k <= len(base.rungs):
        raise DesignError(f"isoflop: k={k} but the ladder has {len(base.rungs)} sizes; add sizes or use 1 <= k <= "
                          f"{len(base.rungs)}")
    if not tokens_per_param > 0:
        raise DesignError(f"isoflop: tokens_per_param={tokens_per_param!r} must be positive (Chinchilla: 20)")
    specs = []
    for C in map(float, budgets):
        if not C > 0:
            raise DesignError(f"isoflop: budget C={C!r} must be a positive number of FLOPs")
        target = math.log(chinchilla_N(C, tokens_per_param))
        nearest = min(range(len(base.rungs)), key=lambda i: abs(math.log(base.rungs[i].N) - target))
        start = min(max(nearest - (k - 1) // 2, 0), len(base.rungs) - k)
        for rung in base.rungs[start:start + k]:
            D = round(tokens_for_compute(C, rung.N))
            _check_tokens("isoflop", D, base.B_tokens, f"budget C={C:g} at {rung.label}")
            specs.append(RunSpec(
                f"isoflop-C{sci(C)}-N{sci(rung.N)}-B{tokens_label(base.B_tokens)}",
                (*rung.overrides, f"budget.tokens={D}"),
                {Tag.DESIGN: Design.ISOFLOP, Tag.BUDGET: sci(C, 6)}))
    return _unique("isoflop", with_seeds(specs, seeds))


def lr_batch(base: Base, tokens_per_param: Sequence[float], lr_min: float, lr_max: float, n_lr: int,
             batch_sequences: Sequence[int], seeds: Sequence[int] = (0,)) -> list[RunSpec]:
    """Learning-rate × batch-size landscape per (N, D): at every ladder size and D = r·N, n_lr peak learning rates
    log-spaced over [lr_min, lr_max] × the given global batches (in sequences; use powers of two for a log grid).
    The grid that optimal lr(N, D) and B(N, D) are read from (Li et al. 2025, Step Law). Runs of one landscape
    share the tag ``point`` = N…-D…. D is rounded up to a whole number of steps of every batch, so that all runs
    of a cell train exactly D tokens (a run's recorded D is the tokens it saw) and analysis groups them as one."""
    lrs = log_space(lr_min, lr_max, n_lr)
    step_lcm = math.lcm(*(int(seqs) * base.seq_len for seqs in batch_sequences)) if batch_sequences else 1
    specs = []
    for rung in base.rungs:
        for r in tokens_per_param:
            D = -(-round(r * rung.N) // step_lcm) * step_lcm
            point = f"N{sci(rung.N)}-D{sci(D)}"
            for seqs in batch_sequences:
                micro = min(base.micro_batch, seqs)
                if seqs % micro:
                    raise DesignError(f"lr_batch: batch of {seqs} sequences is not a multiple of batch.micro_batch="
                                      f"{base.micro_batch}; use multiples of it (powers of two)")
                B = seqs * base.seq_len
                _check_tokens("lr_batch", D, B, f"{rung.label} with tokens_per_param={r}")
                for lr in lrs:
                    specs.append(RunSpec(
                        f"lrb-{point}-B{tokens_label(B)}-lr{sci(lr)}",
                        (*rung.overrides, f"budget.tokens={D}", f"optim.lr={lr!r}",
                         f"batch.sequences={seqs}", f"batch.micro_batch={micro}"),
                        {Tag.DESIGN: Design.LR_BATCH, Tag.POINT: point}))
    return _unique("lr_batch", with_seeds(specs, seeds))
