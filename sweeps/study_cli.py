"""`lab-study`: one Optuna worker. Start several (on one machine or many) with the same --study and --storage.

    lab-study --study lr-b-N2 --space lr_batch --n-trials 20
    lab-study --study lr-b-N2 --space lr_batch --n-trials 20 --storage postgresql+psycopg://postgres@db:5432/optuna
    lab-study --study lr-b-N2 --space lr_batch --n-trials 100 --max-trials-total 64   (one of many workers)
    lab-study --study smoke --space smoke --n-trials 4 --sampler grid --pruner none tracking.uri=sqlite:///runs.db

Trailing arguments are lab-train overrides applied to every trial after the space's own.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Optional

import optuna

from lab.run import quiet_lightning
from sweeps.pruning import PRUNERS
from sweeps.study import SAMPLERS, StudySpec, load_space, open_study, run_trials


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="lab-study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True, help="study name: workers with the same name share the study")
    ap.add_argument("--storage", default=None,
                    help="Optuna storage: sqlite:///optuna.db, journal:path.log, postgresql+psycopg://user@host/db "
                         "(default: optuna.db beside the SQLite MLflow store)")
    ap.add_argument("--space", default="lr_batch", help="conf/study/<name>.yaml or a path to a space file")
    ap.add_argument("--n-trials", type=int, required=True, help="trials this worker runs")
    ap.add_argument("--max-trials-total", type=int, default=None, metavar="K",
                    help="cap on the whole study: no worker starts a trial once K trials have completed or been "
                         "pruned (trials running elsewhere at that moment still finish)")
    ap.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    ap.add_argument("--pruner", default="median", choices=PRUNERS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this worker (one per core it owns)")
    ap.add_argument("--seed", type=int, default=None, help="sampler seed (give each worker its own)")
    ap.add_argument("--heartbeat", type=int, default=30, help="seconds between trial heartbeats (RDB storages)")
    ap.add_argument("--grace", type=int, default=90, help="seconds without heartbeat before a trial is retried")
    ap.add_argument("--max-retry", type=int, default=2, help="retries of a trial whose worker died")
    ap.add_argument("overrides", nargs="*", help="lab-train overrides for every trial, e.g. model.size=3")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.n_trials < 1:
        print("error: --n-trials must be >= 1", file=sys.stderr)
        return 2
    if args.max_trials_total is not None and args.max_trials_total < 1:
        print(f"error: --max-trials-total must be >= 1, got {args.max_trials_total}", file=sys.stderr)
        return 2
    quiet_lightning()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        spec = StudySpec(name=args.study, space=load_space(args.space), storage=args.storage, sampler=args.sampler,
                         pruner=args.pruner, overrides=tuple(args.overrides), threads=args.threads, seed=args.seed,
                         heartbeat_s=args.heartbeat, grace_s=args.grace, max_retry=args.max_retry)
        opened = open_study(spec)
    except ValueError as err:  # the space, the study or a config: no trial ran
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = run_trials(opened, args.n_trials, args.max_trials_total)
    finished = summary.counts.get("COMPLETE", 0) + summary.counts.get("PRUNED", 0)
    if args.max_trials_total is not None and finished >= args.max_trials_total:
        print(f"the study has {finished} completed or pruned trials (cap --max-trials-total {args.max_trials_total})")
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts.items()))
    print(f"study {summary.name}: {counts} (MLflow parent run {summary.parent_run_id})")
    if summary.best_trial is None:
        print("no trial has completed yet")
    else:
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in summary.best_params.items())
        print(f"best: trial {summary.best_trial} val/loss={summary.best_value:.4f} {params} "
              f"(run {summary.best_run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
