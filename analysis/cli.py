"""`lab-fit`: fit scaling laws to recorded runs or a table, print them with intervals, write them as JSON.

    lab-fit loss --input runs.csv --form chinchilla --bootstrap 1000 --target-C 1e24 --out fit.json
    lab-fit loss --tracking-uri sqlite:///mlflow.db --sweep grid-1 --form 'L(N)' --holdout-above 1e15
    lab-fit loss --tracking-uri sqlite:///mlflow.db --sweep const-lr --curve-points schedule-free --min-fraction 0.25
    lab-fit isoflop --tracking-uri sqlite:///mlflow.db --sweep isoflop-1 --target-C 1e18 --out iso.json
    lab-fit hparams --input landscape.csv --method auto --target-N 1e8 --target-D 2e9 --out hp.json
    lab-fit cbs --input branches.csv --seq-len 256 --total-tokens 2e9 --out cbs.json
    lab-fit forecast --tracking-uri sqlite:///mlflow.db --law hparams --target-N 1e8 --target-D 2e9  (--check later)
    lab-fit schedule --input curves.csv --fit-runs cosine constant two-stage --predict-out pred.csv  (cli_schedule)
    lab-fit warmup-check --tracking-uri sqlite:///mlflow.db --sweep warmup-1 --out check.json  (cli_warmup)

Runs come from --input, a CSV or Parquet table (`analysis.load.load_table`, design §4 column names), or from
--tracking-uri, an MLflow store (`analysis.load.load_runs`) narrowed by --experiment and --sweep (tag sweep=ID):
FINISHED runs only, sweep parent runs dropped; N = param N (non-embedding; --total-params: N_total), D = last
`tokens`, C = last `flops` (else 6·N·D), B = param B_tokens, lr = param optim.lr, loss = final val/loss (nats/token).
Finished runs lacking a value the law needs are skipped and named on stderr. `loss --curve-points schedule-free|all`
fits the runs' validation points instead of their final ones (`analysis.laws.curve_points`: schedule-free refuses
runs whose LR schedule makes mid-run points overstate the loss; all forces them) and bootstraps over runs.
For `cbs`, branch runs carry tags branch_of=<reference run id> and checkpoint_tokens=<tokens seen at the branch
point>; a checkpoint's reference loss is its branch at --reference-B (the reference's own batch), else at its
smallest B.

Tables go to stdout, progress to stderr, the result to --out as strict JSON (NaN as null). Bad input (a missing
file or column, NaN, non-positive values, too few points) prints one line `error: ...` naming the problem and the
fix, exits with status 2 and writes nothing. With a store, `--log` also puts the law's JSON and figures onto the
parent run of --sweep (`analysis.cli_log`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import polars as pl

from analysis import cli_log, cli_schedule, cli_warmup, report
from analysis.cli_input import CliError, Progress, frame, store_runs
from analysis.extrapolate import holdout_check
from analysis.laws.cbs import CBS_TOLERANCE, fit_cbs_curve, local_cbs, propose_batch_warmup
from analysis.laws.hparams import METHODS as HPARAM_METHODS, PLATEAU_TOLERANCE, fit_hparams, predict_hparams
from analysis.laws.hparams_joint import JOINT_NEAR
from analysis.laws.isoflop import BUDGET_REL_TOL, fit_isoflop, predict_optimal
from analysis.laws.curve_points import MIN_FRACTION, MODES
from analysis.serialize import jsonable
from analysis.laws.loss import compute_optimal, fit_loss
from analysis.laws.loss_forms import FORMS, get_form
from analysis.load import load_table
from analysis.points import (BRANCH_OF, DEFAULT_GRANULARITY, REFERENCE_B, CbsSettings, cbs_settings,
                             law_points, run_settings)
from tracking.record import Tag
from analysis.recipe import DEFAULT_SEQ_LEN, recipe
from analysis.sensitivity import hparams_sensitivity, isoflop_sensitivity, loss_sensitivity



def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number such as 1e18, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _loss(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    form = get_form(args.form)
    if args.target_C and form.name != "chinchilla":
        raise CliError(f"--target-C needs --form chinchilla (its compute-optimal allocation has a closed form), "
                       f"not {form.name!r}; or fit IsoFLOP profiles with `lab-fit isoflop --target-C`")
    df = frame(args, [*form.inputs, "loss"], say, "loss")
    # Several points per run are not independent: the bootstrap resamples runs.
    groups = {"groups": "run_id"} if args.curve_points != "final" else {}
    say(f"fitting {form.name} ({form.formula}) to {df.height} points ({args.exclude_top_loss} highest losses "
        f"dropped) by multi-start L-BFGS-B, then {args.bootstrap} bootstrap resamples")
    fit = fit_loss(df, form=form.name, bootstrap=args.bootstrap, delta=args.delta, seed=args.seed,
                   exclude_top_loss=args.exclude_top_loss, **groups)
    print(report.fit_table(fit, f"{form.name}: {form.formula}"), flush=True)
    out = {k: v for k, v in fit.to_dict().items() if k != "residuals"}
    out.update(holdout=None, formula=form.formula, exclude_top_loss=args.exclude_top_loss)
    if args.curve_points != "final":
        kinds = dict(df.group_by("point").len().iter_rows())
        out["curve_points"] = {"mode": args.curve_points, "min_fraction": args.min_fraction, "min_D": args.min_D,
                               "runs": df["run_id"].n_unique(), "final": kinds.get("final", 0),
                               "intermediate": kinds.get("intermediate", 0)}
    if args.holdout_above is not None:
        say(f"holdout check: refitting on the runs with C < {args.holdout_above:g} FLOPs")
        check = holdout_check(df, form.name, args.holdout_above, bootstrap=args.bootstrap, delta=args.delta,
                              seed=args.seed, exclude_top_loss=args.exclude_top_loss, **groups)
        print("\n" + report.holdout_table(check), flush=True)
        out["holdout"] = {**check.summary(), "params": check.fit.params, "points": check.frame.to_dicts()}
    args.figures = cli_log.loss_figures(df, fit, check.frame if args.holdout_above else None, args.holdout_above)
    if args.target_C:
        optimal = compute_optimal(fit, args.target_C)
        print("\n" + report.compute_optimal_table(optimal))
        out["compute_optimal"] = optimal.to_dicts()
        if groups and not args.no_sensitivity:
            say("no sensitivity with --curve-points: a budget left out would split runs; fit final points for it")
        if not args.no_sensitivity and not groups:
            say("sensitivity: refitting without each budget, then each size")
            sens = loss_sensitivity(df, args.target_C, {"form": form.name, "delta": args.delta, "seed": args.seed,
                                                        "exclude_top_loss": args.exclude_top_loss})
            print("\n" + "\n\n".join(report.sensitivity_table(s) for s in sens), flush=True)
            out["sensitivity"] = [s.to_dict() for s in sens]
    return out


def _isoflop(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    df = frame(args, ["N", "C", "loss"], say, "isoflop")
    if "budget" in df.columns and df["budget"].null_count():  # IsoFLOP runs tag their planned budget C (points)
        df = df.drop("budget")
    say(f"fitting a parabola in ln N per budget to {df.height} runs, then {args.bootstrap} bootstrap resamples")
    result = fit_isoflop(df, bootstrap=args.bootstrap, seed=args.seed, rel_tol=args.budget_tol)
    allocations = [predict_optimal(result, C) for C in args.target_C or ()]
    print(report.isoflop_report(result, allocations))
    args.figures = cli_log.isoflop_figures(df, result, args.budget_tol)
    sens = None
    if allocations and not args.no_sensitivity:
        say("sensitivity: refitting without each budget")
        sens = isoflop_sensitivity(df, args.target_C, rel_tol=args.budget_tol)
        print("\n" + report.sensitivity_table(sens))
    return {"form": "isoflop", **result.to_dict(), "optimal": [asdict(a) for a in allocations],
            "sensitivity": [sens.to_dict()] if sens else None}


def _recipe_settings(args: argparse.Namespace, df: pl.DataFrame) -> tuple[int, int]:
    """--seq-len and --granularity, else what the fitted runs record (as the dashboard reads them), else defaults."""
    recorded = (None, None)
    if args.tracking_uri is not None and (args.seq_len is None or args.granularity is None):
        recorded = run_settings(store_runs(args).filter(pl.col("run_id").is_in(df["run_id"].to_list())))
    return (args.seq_len or recorded[0] or DEFAULT_SEQ_LEN, args.granularity or recorded[1] or DEFAULT_GRANULARITY)


def _hparams(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if (args.target_N is None) != (args.target_D is None) or (args.target_C and args.target_N):
        raise CliError("give --target-N with --target-D (Step Law form, e.g. --target-N 1e8 --target-D 2e9), or "
                       "--target-C alone (DeepSeek form)")
    df = frame(args, ["N", "D", "lr", "B", "loss"], say, "hparams")
    spread = df.group_by("N", "D").agg(pl.col("lr").n_unique().alias("lr"), pl.col("B").n_unique().alias("B"))
    if spread.filter((pl.col("lr") > 1) & (pl.col("B") > 1)).height == 0:  # else every "optimum" is the one config
        raise CliError(f"no (N, D) cell of the {df.height} runs varies both lr and B, so no optimum can be located; "
                       "sweep an lr x B grid per (N, D) (lab-sweep sweep=lr_batch) and select it with --sweep")
    say(f"locating the optimal (lr, B) of each (N, D) cell in {df.height} runs ({args.method}), "
        f"then {args.bootstrap} bootstrap resamples of cells")
    result = fit_hparams(df, method=args.method, tolerance=args.tolerance, bootstrap=args.bootstrap, seed=args.seed,
                         near=args.near)
    prediction = (predict_hparams(result, N=args.target_N, D=args.target_D, C=args.target_C)
                  if args.target_N or args.target_C else None)
    print(report.hparams_report(result, prediction))
    args.figures = cli_log.hparams_figures(result)
    plan = None
    if prediction is not None:
        seq_len, granularity = _recipe_settings(args, df)
        plan = recipe(result, seq_len, N=args.target_N, D=args.target_D, C=args.target_C,
                      granularity=granularity, batch_warmup=not args.no_batch_warmup)
        print("\n" + report.recipe_table(plan))
    sens = None
    if prediction is not None and not args.no_sensitivity:
        say(f"sensitivity: refitting ({result.method}) without each (N, D) cell")
        sens = hparams_sensitivity(df, result.method, N=args.target_N, D=args.target_D, C=args.target_C,
                                   tolerance=args.tolerance, near=args.near)
        print("\n" + report.sensitivity_table(sens))
    return {**result.to_dict(), "prediction": asdict(prediction) if prediction else None,
            "sensitivity": [sens.to_dict()] if sens else None,
            "recipe": {**asdict(plan), "overrides": plan.to_overrides()} if plan else None}


def _branch_runs(args: argparse.Namespace, say: Progress) -> tuple[pl.DataFrame, CbsSettings]:
    """Branch runs of one reference run (analysis.points), and the warmup plan's settings read from the runs."""
    say(f"loading branch runs from {args.tracking_uri}")
    runs = store_runs(args)
    chosen = law_points(runs, "cbs")
    tagged = chosen.frame
    if args.reference:
        tagged = tagged.filter(pl.col("reference") == args.reference)
    if tagged.height == 0:
        raise CliError(
            f"no FINISHED branch runs{' of ' + args.reference if args.reference else ''} among the {runs.height} "
            f"selected runs: lab-fit cbs reads runs tagged {Tag.BRANCH_OF}=<reference run id> and "
            f"{Tag.CHECKPOINT_TOKENS}=<tokens at the branch point> (B = param B_tokens, loss = final val/loss); tag "
            f"the branches (+tracking.tags.{Tag.BRANCH_OF}=ID +tracking.tags.{Tag.CHECKPOINT_TOKENS}=T) or pass "
            "--input branches.csv with columns checkpoint_tokens, B, loss")
    for note in chosen.notes:
        say(f"warning: {note}", True)
    refs = sorted(set(tagged["reference"].to_list()))
    if len(refs) > 1:
        raise CliError(f"branch runs of {len(refs)} reference runs {refs[:5]}; choose one with --reference RUN_ID")
    chosen = replace(chosen, frame=tagged, runs=chosen.runs.filter(pl.col(BRANCH_OF) == refs[0]))
    return tagged, cbs_settings(runs, chosen)


def _cbs(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if args.input is not None:
        say(f"reading {args.input}")
        df = load_table(args.input, required=("checkpoint_tokens", "B", "loss"))
        seq_len, total, reference_B = args.seq_len, args.total_tokens, args.reference_B
        granularity = args.granularity
    else:
        df, found = _branch_runs(args, say)
        seq_len, total = args.seq_len or found.seq_len, args.total_tokens or found.total_tokens
        reference_B, granularity = args.reference_B or found.reference_B, args.granularity or found.granularity
        if args.reference_B is None and found.reference_B is not None:
            say(f"reference batch {found.reference_B:g} tokens (the branches' {REFERENCE_B})")
        if args.granularity is None and found.granularity is not None:
            say(f"granularity {found.granularity} sequences (the reference run's micro_batch x devices x nodes)")
        if args.start_sequences is None and found.start_sequences is not None:
            args.start_sequences = found.start_sequences
            say(f"start sequences {found.start_sequences} (the reference run's batch)")
    say(f"local CBS from {df.height} branches (tolerance {args.tolerance:g}), then CBS(D) with "
        f"{args.bootstrap} bootstrap resamples")
    local = local_cbs(df, tolerance=args.tolerance, reference_B=reference_B, interpolate=args.interpolate)
    curve = fit_cbs_curve(local, bootstrap=args.bootstrap, seed=args.seed)
    plan = None
    if seq_len and total:
        max_sequences = args.max_sequences or int(df["B"].max() // seq_len)  # no larger than the batches measured
        plan = propose_batch_warmup(curve, total, granularity or DEFAULT_GRANULARITY, int(seq_len), max_sequences,
                                    args.start_sequences)
    else:
        say("no batch warmup proposed: give --seq-len and --total-tokens (known from the store's reference run)", True)
    print(report.cbs_report(local, curve, plan, total))
    args.figures = cli_log.cbs_figures(local, curve, plan, total)
    warmup = None if plan is None else {**asdict(plan), "overrides": plan.to_overrides()}
    return {"form": "cbs", "tolerance": args.tolerance, "reference_B": reference_B, "local": local.to_dicts(),
            "curve": curve.to_dict(), "warmup": warmup}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="CSV or Parquet table of points")
    source.add_argument("--tracking-uri", help="MLflow store, e.g. sqlite:///mlflow.db")
    common.add_argument("--experiment", help="MLflow experiment name (default: all)")
    common.add_argument("--sweep", help="only runs tagged sweep=ID")
    common.add_argument("--bootstrap", type=_count, default=1000, help="bootstrap resamples (0: no intervals)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--out", type=Path, help="write the result here as JSON")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    cli_log.add_argument(common)
    common.add_argument("--no-sensitivity", action="store_true",
                        help="skip the leave-one-budget/size/cell-out refits of the forecast at the target")
    scale = argparse.ArgumentParser(add_help=False)
    scale.add_argument("--total-params", action="store_true", help="use N_total (with embeddings) as N")
    parser = argparse.ArgumentParser(prog="lab-fit", description="Fit scaling laws with bootstrap intervals.")
    sub = parser.add_subparsers(dest="command", required=True)

    loss = sub.add_parser("loss", parents=[common, scale], help="loss law L(N, D), L(N) or L(C) (approach 3)")
    loss.add_argument("--form", choices=sorted(FORMS), default="chinchilla")
    loss.add_argument("--delta", type=_positive, default=1e-3, help="Huber delta on log loss")
    loss.add_argument("--exclude-top-loss", type=_count, default=0, metavar="K", help="drop the K highest losses")
    loss.add_argument("--holdout-above", type=_positive, metavar="C", help="fit on C below, predict C at or above")
    loss.add_argument("--target-C", type=_positive, nargs="+", metavar="C", help="compute-optimal N, D at C FLOPs")
    loss.add_argument("--curve-points", choices=MODES, default="final",
                      help="store only: final = one point per run; schedule-free = also the validations of "
                           "constant-LR runs (refuses other schedules); all = every validation (forced)")
    loss.add_argument("--min-fraction", type=float, default=MIN_FRACTION, metavar="F",
                      help="curve points: only validations at D >= F x the run's D")
    loss.add_argument("--min-D", type=_positive, metavar="D", help="curve points: only validations at D >= this")
    loss.set_defaults(run=_loss)

    iso = sub.add_parser("isoflop", parents=[common, scale], help="IsoFLOP profiles N*(C), D*(C) (approach 2)")
    iso.add_argument("--budget-tol", type=_positive, default=BUDGET_REL_TOL, help="relative C spread of a budget")
    iso.add_argument("--target-C", type=_positive, nargs="+", metavar="C", help="optimal N, D at C FLOPs")
    iso.set_defaults(run=_isoflop)

    hp = sub.add_parser("hparams", parents=[common, scale], help="optimal lr and batch size vs N, D, C")
    hp.add_argument("--method", choices=["auto", *HPARAM_METHODS], default="auto")
    hp.add_argument("--near", type=_positive, default=JOINT_NEAR,
                    help="joint: configs within this relative excess of their cell's best are fitted")
    hp.add_argument("--tolerance", type=_positive, default=PLATEAU_TOLERANCE, help="plateau: relative excess loss")
    for name in ("N", "D", "C"):
        hp.add_argument(f"--target-{name}", type=_positive, metavar=name)
    hp.add_argument("--seq-len", type=int, help="recipe: sequence length of the planned run (default: the fitted "
                    f"runs' seq_len, else {DEFAULT_SEQ_LEN})")
    hp.add_argument("--granularity", type=int, help="recipe: batch multiple, micro_batch x devices (default: the "
                    f"fitted runs', else {DEFAULT_GRANULARITY})")
    hp.add_argument("--no-batch-warmup", action="store_true", help="recipe: a constant batch, no linear ramp")
    hp.set_defaults(run=_hparams)

    cbs = sub.add_parser("cbs", parents=[common], help="critical batch size from branch runs, batch warmup")
    cbs.add_argument("--tolerance", type=_positive, default=CBS_TOLERANCE, help="relative loss excess allowed")
    cbs.add_argument("--reference", metavar="RUN_ID", help="MLflow: the branches of this reference run")
    cbs.add_argument("--reference-B", type=_positive, metavar="B",
                     help=f"reference batch (tokens); default: the branches' {REFERENCE_B} when read from a store, "
                     "else the smallest B of each checkpoint")
    cbs.add_argument("--interpolate", action="store_true", help="interpolate the CBS between B_pass and B_fail")
    cbs.add_argument("--seq-len", type=int, help="sequence length of the planned run (tokens)")
    cbs.add_argument("--total-tokens", type=_positive, help="training tokens of the planned run")
    cbs.add_argument("--granularity", type=int, help="micro_batch x devices (default: the reference run's, "
                     f"else {DEFAULT_GRANULARITY}, lab's default micro_batch)")
    cbs.add_argument("--max-sequences", type=int, help="largest batch (default: the largest B measured)")
    cbs.add_argument("--start-sequences", type=int, help="first batch (default: the reference run's, else "
                     "--granularity)")
    cbs.set_defaults(run=_cbs)

    from analysis.cli_forecast import add_parser as add_forecast  # imports this module: registered late

    add_forecast(sub, [common, scale], _positive)
    cli_schedule.add_parser(sub, common)  # lab-fit schedule: analysis/cli_schedule.py
    cli_warmup.add_parser(sub, common)  # lab-fit warmup-check: analysis/cli_warmup.py
    return parser


def _check_out(path: Path | None) -> None:
    if path is not None and path.is_dir():
        raise CliError(f"--out {path} is a directory; give a file name such as {path / 'fit.json'}")
    if path is not None and not path.parent.is_dir():
        raise CliError(f"--out {path}: directory {path.parent} does not exist; create it or choose another path")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text + "\n")
    os.replace(partial, path)  # atomic: a reader never sees half a file


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lab-fit argv...`; returns the exit status (0 fitted, 2 bad arguments or input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    say = Progress(args.quiet)
    try:
        _check_out(args.out)
        parent = cli_log.sweep_parent(args) if args.log else None  # a wrong --sweep fails before the fit
        payload = args.run(args, say)
        if args.out is not None:
            _write_json(args.out, payload)
            say(f"wrote {args.out}")
        if parent is not None:
            cli_log.log_law(args, parent, payload, args.figures, say)
    except (ValueError, OSError, pl.exceptions.PolarsError) as err:
        message = " ".join(str(err).split())  # one line, no traceback
        if isinstance(err, pl.exceptions.PolarsError):  # e.g. a ragged CSV
            message = (f"cannot read {args.input or args.tracking_uri}: {message.rstrip('.')}; check that it is a "
                       "well-formed table with one value per column in every row")
        print(f"error: {message}", file=sys.stderr)
        return 2
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
