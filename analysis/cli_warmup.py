"""`lab-fit warmup-check`: did the batch warmup `lab-fit cbs` proposed keep its promise? (sweeps.warmup_check)

    lab-sweep sweep=warmup_check hydra.sweeper.design.start_sequences=8 'hydra.sweeper.design.milestones=[[65536,16]]'
    lab-fit warmup-check --tracking-uri sqlite:///mlflow.db --sweep <sweep id> --out check.json
    lab-fit warmup-check --input check.csv    (columns run_name, point, seed, role, steps, D, loss)

From the store: FINISHED runs of design ``warmup_check`` (--experiment, --sweep), paired by their tags point and seed,
each run's role (batch_warmup, constant_final, constant_start), optimizer steps (param ``steps``), D (last
``tokens``) and final val/loss. Prints per (point, seed) and as means over seeds the steps saved,
1 − S_warmup / S_start, and the loss differences L_warmup − L_constant (negative: the warmup is better); --out writes
the same as JSON (analysis.laws.warmup_check). The promise is kept where the warmup takes fewer steps than the start
batch and its loss stays within --tolerance (the CBS's 1%) of that run's.
"""

from __future__ import annotations

import argparse
from typing import Any

from analysis import report
from analysis.cli_input import CliError, Progress, store_runs
from analysis.laws.cbs import CBS_TOLERANCE
from analysis.laws.warmup_check import COLUMNS, check_warmup
from analysis.load import load_table
from analysis.points import warmup_check_points
from tracking.record import Design, Tag


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `lab-fit warmup-check` on the subparsers of analysis.cli."""
    p = sub.add_parser("warmup-check", parents=[common], help="steps saved and loss difference of a batch warmup "
                       "against constant batches (lab-sweep sweep=warmup_check)")
    p.add_argument("--tolerance", type=float, default=CBS_TOLERANCE, help="kept: the warmup's loss within this "
                   "relative excess of the start batch's (the CBS tolerance)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if args.input is not None:
        say(f"reading {args.input}")
        frame = load_table(args.input, required=COLUMNS)
    else:
        say(f"loading runs from {args.tracking_uri}")
        chosen = warmup_check_points(store_runs(args))
        for note in (*chosen.notes, *chosen.mixed):
            say(f"warning: {note}", True)
        frame = chosen.frame
        if frame.height == 0:
            raise CliError(f"no FINISHED runs of design {Design.WARMUP_CHECK} (tag {Tag.DESIGN}) in "
                           f"{args.tracking_uri}{' sweep ' + args.sweep if args.sweep else ''}; run lab-sweep "
                           f"sweep={Design.WARMUP_CHECK} first and pass its sweep id with --sweep")
    check = check_warmup(frame, args.tolerance)
    print(report.warmup_check_report(check))
    args.figures = {}
    return {"form": Design.WARMUP_CHECK, **check.to_dict()}
