"""`lab-demo` (what `make demo` runs): a small but real scaling study on the CPU, end to end.

1. An IsoFLOP sweep (3 budgets x 4 model widths) on the built-in corpus through lab-sweep's machinery, two joblib
   workers with one thread each, every run recorded in `sqlite:///mlflow.db` under one sweep parent run;
2. Chinchilla approach 2 (per-budget parabolas) and approach 3 (L = E + A/N^α + B/D^β) fitted to those runs, with
   bootstrap intervals, and the compute-optimal N and D for a budget 10x the largest;
3. the commands that open the runs and the laws.

Re-running it skips the runs already finished (same sweep id), so an interrupted demo resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT = "demo"
SWEEP_ID = "demo-isoflop"
BUDGETS = (5e9, 1e10, 3e10)  # C in FLOPs: tiny, so 12 runs train in a few minutes on 2 CPU cores
WIDTHS = (6, 8, 12, 16)
"""Two-layer models of these widths (N = 1e3 ... 6e3): at these budgets byte-level models want far more
tokens per parameter than Chinchilla's 20, and the ladder's first steps (N = 1.3e4, 9.8e4) are too coarse to put
each budget's optimum inside the sampled sizes."""


def sweep_overrides(jobs: int) -> list[str]:
    budgets = ",".join(f"{c:.0e}" for c in BUDGETS)
    sizes = ",".join(f"{{d_model:{d},n_layers:2,n_heads:1}}" for d in WIDTHS)
    return [
        "sweep=isoflop", f"hydra.sweeper.design.budgets=[{budgets}]", f"hydra.sweeper.design.sizes=[{sizes}]",
        f"hydra.sweeper.design.k={len(WIDTHS)}", f"hydra.sweeper.id={SWEEP_ID}",
        "model.seq_len=64", "batch.sequences=8", "batch.micro_batch=4", "optim.lr=3e-3",
        "trainer.val_every_steps=50", "trainer.checkpoint_every_steps=200", "data.val_sequences=32",
        f"tracking.uri={TRACKING_URI}", f"tracking.experiment={EXPERIMENT}",
        *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "trainer.threads=1"] if jobs > 1 else []),
    ]


def fit_and_report(runs: pl.DataFrame, bootstrap: int) -> None:
    from analysis.laws import compute_optimal, fit_loss
    from analysis.laws.isoflop import fit_isoflop, predict_optimal
    from analysis.report import fit_table, isoflop_report

    target_C = 10 * max(BUDGETS)
    print("\n== Best size per budget ==")
    best = runs.sort("loss").group_by("budget", maintain_order=True).first().sort("budget")
    for row in best.iter_rows(named=True):
        print(f"  C = {row['budget']:.0e} FLOPs: N = {row['N']:.3g} (val/loss {row['loss']:.4f})")
    print("\n== Approach 2: IsoFLOP profiles ==", flush=True)
    try:
        iso = fit_isoflop(runs, bootstrap=bootstrap)
        print(isoflop_report(iso, [predict_optimal(iso, target_C)]))
    except ValueError as err:  # e.g. every budget's best size at the edge of the sampled sizes
        print(f"  approach 2 cannot fit these runs: {err}")
    print("\n== Approach 3: L(N, D) = E + A/N^alpha + B/D^beta ==", flush=True)
    law = fit_loss(runs, form="chinchilla", bootstrap=bootstrap)
    print(fit_table(law))
    opt = compute_optimal(law, [target_C]).row(0, named=True)
    print(f"\ncompute-optimal at C = {target_C:.1e} FLOPs (10x the largest budget), approach 3:\n"
          f"  N* = {opt['N_opt']:.3g}  [{opt['N_opt_lo']:.3g}, {opt['N_opt_hi']:.3g}]\n"
          f"  D* = {opt['D_opt']:.3g}  [{opt['D_opt_lo']:.3g}, {opt['D_opt_hi']:.3g}] tokens\n"
          f"  predicted loss {opt['loss_opt']:.3f} nats/token, {opt['tokens_per_param']:.1f} tokens per parameter")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the demo scaling study on the CPU.")
    ap.add_argument("--jobs", type=int, default=2, help="parallel training workers (default 2: one per core)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from analysis.load import load_runs
    from sweeps.cli import run_sweep

    print(f"== IsoFLOP sweep: budgets {', '.join(f'{c:.0e}' for c in BUDGETS)} FLOPs x widths {WIDTHS} (2 layers) ==", flush=True)
    summary = run_sweep(sweep_overrides(args.jobs))
    print(summary.table())
    runs = load_runs(TRACKING_URI, experiment=EXPERIMENT, filter_tags={"sweep": SWEEP_ID})
    runs = runs.filter(pl.col("status") == "FINISHED", pl.col("parent_run_id").is_not_null()).with_columns(
        budget=pl.col("tag.budget").cast(pl.Float64))  # the design's C: groups the IsoFLOP profiles exactly
    print("\n== Runs ==")
    with pl.Config(tbl_rows=50, float_precision=4, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(runs.select("run_name", "N", "D", "C", pl.col("loss").alias("val/loss")).sort("C", "N"))
    fit_and_report(runs, args.bootstrap)
    store = Path("mlflow.db").resolve()
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Every run is in the MLflow store {store}:\n"
          f"  .venv/bin/mlflow ui --backend-store-uri {TRACKING_URI}      # runs and curves\n"
          f"  .venv/bin/lab-dashboard --tracking-uri {TRACKING_URI}        # fitted laws\n"
          f"  .venv/bin/lab-fit loss --tracking-uri {TRACKING_URI} --sweep {SWEEP_ID} --out fit.json")
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
