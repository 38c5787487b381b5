"""The batch-size half of `lab-demo`: an lr x B landscape at two sizes and a critical-batch-size branch study.

Both run through lab-sweep's machinery (sweeps.cli.run_sweep) into the demo's MLflow store and are fitted with the
public analysis API: `analysis.laws.hparams.fit_hparams` (lr*(N, D) and B*(D), Li et al. 2025) and
`analysis.laws.cbs` (local CBS per checkpoint, CBS(D) and a batch warmup, Merrill et al. 2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import polars as pl

SEQ_LEN = 64


@dataclass(frozen=True)
class Landscape:
    """lr x B grids per (N, D) cell: 2 widths x 2 tokens-per-parameter ratios = 4 cells (fit_hparams' minimum)."""

    widths: tuple[int, ...]
    """Two-layer models of these d_model."""
    tokens_per_param: tuple[float, ...]
    lr_min: float
    lr_max: float
    n_lr: int
    batch_sequences: tuple[int, ...]
    """Global batches; each run's micro-batch is min(8, batch) (the lr_batch design, batch.micro_batch=8)."""


@dataclass(frozen=True)
class Branches:
    """One reference run that keeps checkpoints, and branches from each at several batch sizes (sweeps.branches)."""

    width: int
    tokens: int
    """D of the reference."""
    reference_sequences: int
    checkpoint_tokens: tuple[int, ...]
    window_tokens: int
    batch_sequences: tuple[int, ...]
    micro_batch: int
    tolerance: float
    """ε: a branch is as good as the reference while its loss is within this relative excess."""


def shape(width: int) -> str:
    return f"{{d_model:{width},n_layers:2,n_heads:1}}"


def ints(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def landscape_overrides(s: Landscape, sweep_id: str) -> list[str]:
    return ["sweep=lr_batch", f"hydra.sweeper.id={sweep_id}",
            f"hydra.sweeper.design.sizes=[{','.join(shape(w) for w in s.widths)}]",
            f"hydra.sweeper.design.tokens_per_param=[{ints(s.tokens_per_param)}]",
            f"hydra.sweeper.design.lr_min={s.lr_min}", f"hydra.sweeper.design.lr_max={s.lr_max}",
            f"hydra.sweeper.design.n_lr={s.n_lr}", f"hydra.sweeper.design.batch_sequences=[{ints(s.batch_sequences)}]"]


def branches_overrides(s: Branches, sweep_id: str) -> list[str]:
    # WSD keeps the lr flat until 80% of D: every branch window lies in the stable phase, so branches differ only by
    # batch size and the rescaled lr, not by where they sit in a decay.
    return ["sweep=cbs", f"hydra.sweeper.id={sweep_id}", f"hydra.sweeper.design.sizes=[{shape(s.width)}]",
            f"hydra.sweeper.design.tokens={s.tokens}",
            f"hydra.sweeper.design.checkpoint_tokens=[{ints(s.checkpoint_tokens)}]",
            f"hydra.sweeper.design.window_tokens={s.window_tokens}",
            f"hydra.sweeper.design.batch_sequences=[{ints(s.batch_sequences)}]",
            f"hydra.sweeper.design.reference_sequences={s.reference_sequences}",
            f"hydra.sweeper.design.micro_batch={s.micro_batch}", "hydra.sweeper.design.lr_rescale=sqrt",
            "optim=wsd", "optim.lr=3e-3"]


def report_landscape(runs: pl.DataFrame, bootstrap: int, target: Optional[tuple[float, float]]) -> Any:
    """Per-cell optima, lr*(N, D) = c·N^α·D^β and B*(D) = c'·D^γ with 95% intervals; lr*, B* at ``target`` (N, D).
    Returns the HparamsResult, or the ValueError that stopped the fit."""
    from analysis.laws.hparams import fit_hparams, predict_hparams
    from analysis.report import hparams_report

    try:
        result = fit_hparams(runs.select("N", "D", "C", "lr", "B", "loss"), bootstrap=bootstrap)
    except ValueError as err:
        print(f"  the landscape cannot be fitted: {err}")
        return err
    prediction = predict_hparams(result, N=target[0], D=target[1]) if target else None
    print(hparams_report(result, prediction))
    if prediction is not None:
        print(f"\nat N = {target[0]:.3g}, D = {target[1]:.3g} (the compute-optimal run at 10x the largest IsoFLOP "
              f"budget): lr* = {prediction.lr:.3g} [{prediction.lr_ci95[0]:.3g}, {prediction.lr_ci95[1]:.3g}], "
              f"B* = {prediction.B:.3g} [{prediction.B_ci95[0]:.3g}, {prediction.B_ci95[1]:.3g}] tokens")
    return result


def report_branches(runs: pl.DataFrame, s: Branches, bootstrap: int) -> Any:
    """Local CBS per checkpoint (reference loss: the branch at the reference's own batch, the smallest), CBS(D)
    with 95% intervals, and the batch warmup it proposes for a run of the reference's length. Returns the CbsFit,
    or the ValueError that stopped the fit."""
    from analysis.laws.cbs import fit_cbs_curve, local_cbs
    from analysis.report import cbs_report

    if "tag.branch_of" not in runs.columns:
        print("  no finished branch runs")
        return ValueError("no finished branch runs")
    branches = runs.filter(pl.col("tag.branch_of").is_not_null()).with_columns(
        checkpoint_tokens=pl.col("tag.checkpoint_tokens").cast(pl.Float64))
    try:
        local = local_cbs(branches.select("checkpoint_tokens", "B", "loss"), tolerance=s.tolerance,
                          reference_B=s.reference_sequences * SEQ_LEN)
    except ValueError as err:
        print(f"  no local CBS: {err}")
        return err
    try:
        curve = fit_cbs_curve(local, bootstrap=bootstrap)
    except ValueError as err:
        with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
            print(local)
        print(f"  no CBS curve: {err}")
        return err
    plan = warmup_plan(curve, s)
    print(f"tolerance ε = {s.tolerance:g} (relative loss excess over the branch at the reference's B = "
          f"{s.reference_sequences * SEQ_LEN} tokens)\n")
    print(cbs_report(local, curve, plan))
    return curve


def warmup_plan(curve: Any, s: Branches) -> Any:
    """The batch warmup the CBS curve proposes for a run of the reference's length, model and start batch."""
    from analysis.laws.cbs import propose_batch_warmup

    return propose_batch_warmup(curve, total_tokens=s.tokens, micro_batch_granularity=s.micro_batch, seq_len=SEQ_LEN,
                                max_sequences=max(s.batch_sequences), start_sequences=s.reference_sequences)
