"""The schedule half of `lab-demo`: a schedule law predicts a schedule before it trains, and a batch warmup is checked.

- A schedule study (sweeps.schedule_study) of one small model: the Multi-Power Law (Luo et al. 2025,
  analysis.laws.schedule) is fitted on three runs, cosine, constant and a two-stage drop; it predicts the WSD run's
  curve from its planned lr sequence (lab's own step plan) and the prediction is written to outputs/ *before* that
  run trains; then WSD trains and the demo prints predicted against realised final loss.
- The batch warmup `lab-fit cbs` proposed from the CBS branches is trained against constant batches on the same
  tokens (sweeps.warmup_check), and `analysis.laws.warmup_check` reports the steps saved and the loss difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import polars as pl

from sweeps.demo_batch import Branches, shape

def shipped_design() -> dict[str, Any]:
    """The schedule study as conf/sweep/schedule_study.yaml ships it (Luo et al. 2025's three fitting runs, cosine,
    constant and a two-stage drop, with WSD held out): the demo runs exactly that study, at its own scale."""
    import importlib.resources

    import yaml

    return yaml.safe_load((importlib.resources.files("conf") / "sweep" / "schedule_study.yaml").read_text())["design"]


@dataclass(frozen=True)
class Schedules:
    """One model, one batch, one peak lr, one token stream; only the lr schedule differs between runs."""

    width: int
    heads: int
    tokens: int
    """D of every run, a whole number of steps of `sequences`."""
    lr: float
    sequences: int
    val_every_steps: int
    val_sequences: int
    """A larger validation set than the other studies: the curves' points are what the law is fitted to."""


def schedules_overrides(s: Schedules, sweep_id: str, train_held_out: bool) -> list[str]:
    """The shipped study's schedules at the demo's scale; train_held_out=False launches the fitted ones only."""
    return ["sweep=schedule_study", f"hydra.sweeper.id={sweep_id}",
            f"hydra.sweeper.design.sizes=[{{d_model:{s.width},n_layers:2,n_heads:{s.heads}}}]",
            f"hydra.sweeper.design.tokens={s.tokens}", f"hydra.sweeper.design.lr={s.lr}",
            f"hydra.sweeper.design.train_held_out={str(train_held_out).lower()}",
            f"batch.sequences={s.sequences}", f"batch.micro_batch={s.sequences}",
            f"trainer.val_every_steps={s.val_every_steps}", f"data.val_sequences={s.val_sequences}"]


def _size(s: Schedules) -> dict[str, int]:
    return {"d_model": s.width, "n_layers": 2, "n_heads": s.heads}


def held_out_runs(s: Schedules, train_overrides: list[str]) -> dict[str, list[str]]:
    """The held-out runs' names and the overrides lab-train will get for them (the design's own expansion, after
    the demo's task overrides), to plan their lr sequences before they train."""
    from lab.train import compose_config
    from sweeps.catalog import expand
    from tracking.record import Role, Tag

    task = [*train_overrides, f"batch.sequences={s.sequences}", f"batch.micro_batch={s.sequences}"]
    cfg = compose_config(task)
    # what lab-sweep expands: the shipped design at the demo's size, tokens and lr, held-out runs included
    design = {**shipped_design(), "sizes": [_size(s)], "tokens": s.tokens, "lr": s.lr, "train_held_out": True}
    specs = expand(design, cfg.model, cfg.batch)
    return {spec.tags[Tag.SCHEDULE_NAME]: [*task, *spec.overrides] for spec in specs
            if spec.tags[Tag.ROLE] == Role.HELD_OUT}


@dataclass(frozen=True)
class HeldOutForecast:
    """The law fitted on the role=fit runs and its predicted final loss of each held-out schedule."""

    fit: Any
    """analysis.laws.schedule.ScheduleFit"""
    fit_ids: list[str]
    predicted_final: dict[str, float]
    steps: dict[str, int]


def predict_held_out(tracking_uri: str, runs: pl.DataFrame, sweep_id: str, train_overrides: list[str],
                     s: Schedules, bootstrap: int, out: Path) -> HeldOutForecast:
    """Fit the Multi-Power Law on the study's finished role=fit runs among `runs` (the study's runs as loaded after
    its launch; what `lab-fit schedule --sweep` fits) and predict the final loss of every held-out schedule from
    the lr sequence lab-train will use (sweeps.schedule_study.planned_lr); the prediction is written to `out`
    before the held-out runs train."""
    from analysis.cli_schedule import fit_curves, schedule_report, store_curves
    from analysis.laws.schedule import predict_curve
    from analysis.points import schedule_runs
    from sweeps.schedule_study import planned_lr

    chosen = schedule_runs(runs)
    if chosen is None or chosen.sweep is None:
        raise ValueError(f"no finished run of role fit in the schedule study {sweep_id}")
    fit_ids = list(chosen.fit)
    curves, names = store_curves(tracking_uri, runs, fit_ids)
    fit, rows, _, _ = fit_curves(curves, fit_ids, names, "multi-power", bootstrap, 1e-3, 0)
    print(schedule_report(fit, rows))
    predicted, steps = {}, {}
    for name, overrides in held_out_runs(s, train_overrides).items():
        lr = planned_lr(overrides)
        predicted[name] = float(predict_curve(fit, lr, np.array([lr.size - 1]))[0])
        steps[name] = int(lr.size)
        print(f"\npredicted before it trains: {name} ends at val/loss {predicted[name]:.4f} after {steps[name]} steps")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sweep": sweep_id, "law": fit.to_dict(), "predicted_final_loss": predicted,
                               "steps": steps}, indent=1))
    return HeldOutForecast(fit, fit_ids, predicted, steps)


@dataclass(frozen=True)
class HeldOutCheck:
    """Predicted against realised, per held-out schedule: final loss and the whole curve's mean relative error."""

    predicted_final: dict[str, float]
    realised_final: dict[str, float]
    curve_error: dict[str, float]

    def error(self, name: str) -> float:
        return self.predicted_final[name] / self.realised_final[name] - 1.0


def check_held_out(tracking_uri: str, runs: pl.DataFrame, forecast: HeldOutForecast) -> HeldOutCheck:
    """The held-out runs as trained (`runs`: the study's runs as loaded after its second launch): their final
    val/loss and curves against what the law predicted before."""
    from analysis.cli_schedule import SKIP_FRACTION, store_curves
    from analysis.laws.schedule import predict_curve, relative_errors
    from analysis.points import schedule_points
    from tracking.record import Role, Tag

    held = schedule_points(runs).frame.filter(pl.col("role") == Role.HELD_OUT)
    curves, _ = store_curves(tracking_uri, runs, forecast.fit_ids)
    realised, errors = {}, {}
    for row in held.iter_rows(named=True):
        name, curve = row[Tag.SCHEDULE_NAME], curves[row["run_id"]]
        realised[name] = float(row["loss"])
        keep = curve.steps >= SKIP_FRACTION * curve.lr.size
        errors[name] = relative_errors(predict_curve(forecast.fit, curve.lr, curve.steps[keep]), curve.loss[keep])[0]
    check = HeldOutCheck({k: v for k, v in forecast.predicted_final.items() if k in realised}, realised, errors)
    for name in check.realised_final:
        print(f"{name}: predicted {check.predicted_final[name]:.4f} before training, realised "
              f"{check.realised_final[name]:.4f} ({check.error(name):+.2%}); whole curve after the first "
              f"{SKIP_FRACTION:.0%}: mean relative error {check.curve_error[name]:.2%}")
    return check


# ---------------------------------------------------------------------------------------- the batch warmup check


def warmup_check_overrides(plan: Any, b: Branches, sweep_id: str) -> list[str]:
    """The check of the warmup `plan` (analysis.laws.cbs.BatchWarmupPlan) proposed for the CBS reference: the
    reference's model, lr and optimizer, on its D tokens."""
    return [*plan.check_overrides(b.tokens), f"hydra.sweeper.id={sweep_id}",
            f"hydra.sweeper.design.sizes=[{shape(b.width)}]", f"hydra.sweeper.design.micro_batch={b.micro_batch}",
            "hydra.sweeper.design.lr=3e-3", "optim=wsd"]


def report_warmup_check(runs: pl.DataFrame) -> Any:
    """`lab-fit warmup-check` on the check's runs: steps saved and loss differences; the WarmupCheck or the error."""
    from analysis.laws.cbs import CBS_TOLERANCE
    from analysis.laws.warmup_check import check_warmup
    from analysis.points import warmup_check_points
    from analysis.report import warmup_check_report

    try:
        check = check_warmup(warmup_check_points(runs).frame, CBS_TOLERANCE)
    except ValueError as err:
        print(f"  the warmup check cannot be read: {err}")
        return err
    print(warmup_check_report(check))
    return check


def warmup_line(check: Any, plan: Optional[Any]) -> str:
    """The closing page's lines on the warmup check."""
    if plan is None or not getattr(plan, "milestones", ()):
        return "Batch warmup check: not run (the CBS study proposed no batch warmup to check)."
    if isinstance(check, Exception) or not check.pairs:
        return f"Batch warmup check: no result ({check if isinstance(check, Exception) else 'no complete run set'})."
    p = check.pairs[0]
    batches = " -> ".join(str(b) for b in (plan.start_sequences, *(b for _, b in plan.milestones)))
    return (f"Batch warmup check ({batches} sequences, as lab-fit cbs proposed, on {p.D_warmup:.3g} tokens): "
            f"{p.steps_saved:.0%} fewer steps\n  than a constant {plan.start_sequences} sequences ({p.steps_warmup} vs "
            f"{p.steps_start}); val/loss {p.loss_warmup:.4f} vs {p.loss_start:.4f} "
            f"({p.loss_diff_start / p.loss_start:+.2%}), vs {p.loss_final:.4f} at a constant final batch: promise "
            f"{'kept' if p.kept(check.tolerance) else 'NOT kept'} (within {check.tolerance:.0%}).")


def schedule_line(check: Any) -> str:
    """The closing page's lines on the held-out schedule."""
    if isinstance(check, Exception):
        return f"Schedule law: no held-out check ({check})."
    out = []
    for name in check.realised_final:
        out.append(f"Schedule law (Multi-Power, fitted on cosine, constant, two-stage): {name} predicted before it "
                   f"trained {check.predicted_final[name]:.4f},\n  realised {check.realised_final[name]:.4f} "
                   f"({check.error(name):+.2%}); its whole curve within {check.curve_error[name]:.2%} on average "
                   "(Luo et al.: 0.11-0.17% at 25M-400M).")
    return "\n".join(out) or "Schedule law: the held-out run did not finish."
