"""Learning curves as (N, D, loss) points: which validations are selected per schedule, the refusal of schedules
that do not allow it, and a fit on curve points of a synthetic law (frames, a real MLflow store and lab-fit)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from analysis.cli import main
from analysis.laws import CurvePointsError, curve_points, fit_loss
from analysis.laws.curve_points import POINTS_SCHEMA
from analysis.load import load_curves, load_runs

TRUTH = {"E": 1.8, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.36}
B_TOKENS = 2 ** 20  # tokens per step: D from 1e7 to 1.7e9, where both terms of the law matter
VAL_EVERY = 10  # steps


def law(N, D):
    return TRUTH["E"] + TRUTH["A"] / N ** TRUTH["alpha"] + TRUTH["B"] / D ** TRUTH["beta"]


def cosine_bump(step: int, steps: int) -> float:
    """Excess loss of a cosine run mid-run over the run trained to that D: zero at the end of the cycle."""
    return 0.15 * math.sin(math.pi * step / steps)


def run_frames(specs: list[dict], noise: float = 0.0, seed: int = 0,
               every: int = VAL_EVERY) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A runs frame and a val/loss curves frame shaped as analysis.load returns them.

    spec: name, N, steps, schedule (None: no optim.schedule param), warmup_fraction, warmup_tokens (None or a
    number). Constant-LR runs follow the law at every D; others carry a mid-run bump (`cosine_bump`).
    """
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    for spec in specs:
        N, steps, D = spec["N"], spec["steps"], float(spec["steps"] * B_TOKENS)
        for step in range(every, steps + 1, every):
            tokens = float(step * B_TOKENS)
            bump = 0.0 if spec.get("schedule") in ("constant", "inverse_sqrt") else cosine_bump(step, steps)
            loss = (law(N, tokens) + bump) * math.exp(rng.normal(0, noise))
            rows.append((spec["name"], "val/loss", step, loss, 1_700_000_000_000 + step, tokens, 6.0 * N * tokens))
        runs.append({"run_id": spec["name"], "run_name": spec["name"], "status": "FINISHED", "N": N,
                     "N_total": N + 1e4, "D": D, "C": 6.0 * N * D, "B": float(B_TOKENS), "lr": 3e-3,
                     "loss": rows[-1][3], "steps": steps, "param.optim.schedule": spec.get("schedule"),
                     "param.optim.warmup_fraction": spec.get("warmup_fraction", 0.05),
                     "param.optim.warmup_tokens": str(spec.get("warmup_tokens")), "param.D": D})
    curves = pl.DataFrame(rows, orient="row", schema={
        "run_id": pl.String, "metric": pl.String, "step": pl.Int64, "value": pl.Float64, "timestamp": pl.Int64,
        "tokens": pl.Float64, "flops": pl.Float64})
    return pl.DataFrame(runs), curves


def ladder(schedule: str | None, sizes=(1e6, 4e6, 1.6e7, 6.4e7), steps=(400, 1600)) -> list[dict]:
    return [{"name": f"{schedule}-N{N:.0e}-S{S}", "N": N, "steps": S, "schedule": schedule}
            for N in sizes for S in steps]


def test_schedule_free_takes_validations_past_the_fraction_and_the_warmup_and_marks_finals():
    runs, curves = run_frames([
        {"name": "const", "N": 1e6, "steps": 100, "schedule": "constant", "warmup_fraction": 0.3},
        {"name": "isqrt", "N": 1e6, "steps": 100, "schedule": "inverse_sqrt", "warmup_tokens": 2 * B_TOKENS}])
    points = curve_points(runs, curves, "schedule-free", min_fraction=0.2)
    assert points.schema == pl.Schema(POINTS_SCHEMA)
    const = points.filter(pl.col("run_id") == "const")
    # the warmup (30% of the run) outlasts min_fraction (20%): validations from step 40 on, D > warmup end
    assert const["step"].to_list() == list(range(40, 101, 10))
    assert const["point"].to_list() == ["intermediate"] * 6 + ["final"]
    assert const["fraction"].to_list() == pytest.approx([s / 100 for s in range(40, 101, 10)])
    assert const["D"].to_list() == [s * B_TOKENS for s in range(40, 101, 10)]
    assert const["C"].to_list() == pytest.approx([6e6 * s * B_TOKENS for s in range(40, 101, 10)])
    assert const["loss"].to_list() == pytest.approx([law(1e6, s * B_TOKENS) for s in range(40, 101, 10)])
    isqrt = points.filter(pl.col("run_id") == "isqrt")  # absolute warmup of 2 steps: min_fraction decides
    assert isqrt["step"].to_list() == list(range(20, 101, 10))
    with_min_D = curve_points(runs, curves, "schedule-free", min_fraction=0.0, min_D=75 * B_TOKENS)
    assert with_min_D.filter(pl.col("run_id") == "isqrt")["step"].to_list() == [80, 90, 100]


def test_decaying_and_unknown_schedules_are_refused_unless_forced():
    specs = ladder("constant", sizes=(1e6,), steps=(100,))
    specs += [{"name": f"r-{s}", "N": 1e6, "steps": 100, "schedule": s}
              for s in ("cosine", "wsd", "linear", "power", None)]
    specs.append({"name": "isqrt-fraction", "N": 1e6, "steps": 100, "schedule": "inverse_sqrt"})
    runs, curves = run_frames(specs)
    with pytest.raises(CurvePointsError) as refused:
        curve_points(runs, curves, "schedule-free")
    message = str(refused.value)
    assert message.startswith("6 of 7 runs have an LR schedule")
    for words in ("1 cosine", "1 wsd", "1 linear", "1 power", "1 inverse_sqrt", "1 without an optim.schedule param",
                  "'final'", "'all'", "Hoffmann"):
        assert words in message, words
    assert "constant-N" not in message  # the eligible run is not named

    forced = curve_points(runs, curves, "all", min_fraction=0.0)
    assert forced.height == curves.height  # every validation of every run, whatever its schedule
    assert forced.filter(pl.col("point") == "final").height == runs.height
    cosine = forced.filter(pl.col("run_id") == "r-cosine").sort("D")
    assert cosine["loss"][4] > law(1e6, cosine["D"][4]) + 0.1  # mid-run: the bump the schedule-free mode refuses

    finals = curve_points(runs, None, "final")
    assert finals["point"].unique().to_list() == ["final"] and finals.height == runs.height
    assert finals.sort("run_id")["loss"].to_list() == runs.sort("run_id")["loss"].to_list()


def test_replayed_steps_nan_and_missing_tokens():
    runs, curves = run_frames([{"name": "c", "N": 1e6, "steps": 50, "schedule": "constant"}])
    replay = curves.filter(pl.col("step") == 30).with_columns(value=pl.lit(9.0), timestamp=pl.col("timestamp") + 1)
    nan = curves.filter(pl.col("step") == 40).with_columns(value=pl.lit(float("nan")),
                                                          timestamp=pl.col("timestamp") + 1)
    last = pl.col("step") == 50
    curves = pl.concat([curves.with_columns(tokens=pl.when(last).then(None).otherwise(pl.col("tokens"))), replay, nan])
    points = curve_points(runs, curves, "schedule-free", min_fraction=0.0)
    by_step = dict(zip(points["step"].to_list(), points["loss"].to_list()))
    assert by_step[30] == 9.0  # the later of two rows logged at one step, once
    assert 40 not in by_step  # its latest row is NaN
    assert points.filter(last)["D"].to_list() == [50 * B_TOKENS]  # the run's D fills the final point's tokens
    assert points.height == 4


def test_bad_arguments():
    runs, curves = run_frames(ladder("constant", sizes=(1e6,), steps=(100,)))
    with pytest.raises(ValueError, match="mode must be one of"):
        curve_points(runs, curves, "every")
    with pytest.raises(ValueError, match="min_fraction=1.5"):
        curve_points(runs, curves, min_fraction=1.5)
    with pytest.raises(ValueError, match="needs the runs' curves"):
        curve_points(runs, None, "schedule-free")
    with pytest.raises(ValueError, match=r"lacks columns \['loss'\]"):
        curve_points(runs.drop("loss"), curves)


def test_fit_on_schedule_free_curve_points_recovers_the_law_and_forced_cosine_points_do_not():
    # Two lengths per size: final points alone (8) would barely constrain five parameters.
    runs, curves = run_frames(ladder("constant"), noise=0.002, every=40)
    points = curve_points(runs, curves, "schedule-free")
    assert points.height == 4 * (8 + 31)  # per size: 100..400 and 400..1600 steps, every 40
    fit = fit_loss(points, form="chinchilla", bootstrap=60, groups="run_id", seed=1)
    for name, true in TRUTH.items():
        lo, hi = fit.ci95[name]
        assert lo <= true <= hi, f"{name}={true} outside [{lo}, {hi}] (estimate {fit.params[name]})"
    cos_runs, cos_curves = run_frames(ladder("cosine"), noise=0.002, every=40)
    biased = fit_loss(curve_points(cos_runs, cos_curves, "all"), form="chinchilla", bootstrap=0)
    assert abs(biased.params["beta"] - TRUTH["beta"]) > 5 * fit.stderr["beta"]


def test_holdout_on_curve_points_holds_out_whole_runs():
    from analysis.extrapolate import holdout_check

    runs, curves = run_frames(ladder("constant"), noise=0.002, every=40)
    points = curve_points(runs, curves, "schedule-free")
    threshold = sorted(runs["C"].to_list())[-3]  # the three largest runs are held out
    held = set(runs.filter(pl.col("C") >= threshold)["run_id"].to_list())
    check = holdout_check(points, "chinchilla", threshold, bootstrap=0, groups="run_id")
    test_runs = set(check.frame.join(points, on=["N", "D", "C", "loss"])["run_id"].to_list())
    assert test_runs <= held and check.n_test == points.filter(pl.col("C") >= threshold).height
    assert check.n_train == points.filter(~pl.col("run_id").is_in(list(held))).height
    assert check.n_unused > 0, "the early points of the held-out runs are not fitted on"
    assert check.n_train + check.n_test + check.n_unused == points.height
    assert check.max_abs_rel_error < 0.02
    by_point = holdout_check(points, "chinchilla", threshold, bootstrap=0)  # one point per run assumed
    assert by_point.n_train == check.n_train + check.n_unused


# --- a real MLflow store and lab-fit ----------------------------------------------------------------------------

def log_run(client, experiment_id: str, spec: dict, sweep: str) -> str:
    """A finished lab-train run as lab/ records it (design §5): dotted params, per-step tokens/flops, val/loss."""
    from mlflow.entities import Metric, Param

    N, steps = spec["N"], spec["steps"]
    run_id = client.create_run(experiment_id, run_name=spec["name"], tags={"sweep": sweep}).info.run_id
    params = {"N": int(N), "N_total": int(N) + 16384, "seq_len": 64, "B_tokens": B_TOKENS, "B_sequences": 16,
              "optim.lr": 3e-3, "optim.schedule": spec["schedule"], "optim.warmup_fraction": 0.05,
              "optim.warmup_tokens": None, "optim.decay_fraction": 0.2, "D": steps * B_TOKENS}
    metrics = []
    for step in range(VAL_EVERY, steps + 1, VAL_EVERY):  # tokens/flops at the validation steps suffice here
        tokens = float(step * B_TOKENS)
        bump = 0.0 if spec["schedule"] == "constant" else cosine_bump(step, steps)
        metrics += [Metric("tokens", tokens, 0, step), Metric("flops", 6.0 * N * tokens, 0, step),
                    Metric("val/loss", law(N, tokens) + bump, 0, step)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000],
                         params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_experiment) -> str:
    uri, client, exp = new_experiment(tmp_path_factory.mktemp("mlflow"), "ladder")
    for spec in ladder("constant", steps=(200, 800)):
        log_run(client, exp, spec, "const")
    for spec in ladder("cosine", steps=(200,)):
        log_run(client, exp, spec, "cos")
    return uri


def test_store_runs_give_curve_points(store):
    runs = load_runs(store, filter_tags={"sweep": "const"})
    curves = load_curves(store, run_ids=runs["run_id"].to_list(), metrics=["val/loss"])
    points = curve_points(runs, curves, "schedule-free", min_fraction=0.5)
    per_run = points.group_by("run_name").agg(pl.col("step").min(), pl.len()).sort("run_name")
    # steps 100..200 of the 200-step runs (11 points), 400..800 of the 800-step runs (41 points)
    assert per_run.filter(pl.col("run_name").str.ends_with("S200"))["len"].unique().to_list() == [11]
    assert per_run.filter(pl.col("run_name").str.ends_with("S800"))["step"].unique().to_list() == [400]
    with pytest.raises(CurvePointsError, match="4 of 12 runs .*4 cosine"):
        curve_points(load_runs(store), None, "schedule-free")


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_lab_fit_on_curve_points_recovers_the_law_and_refuses_cosine_runs(store, tmp_path, capsys):
    out = tmp_path / "fit.json"
    code, stdout, stderr = run_cli(["loss", "--tracking-uri", store, "--sweep", "const", "--curve-points",
                                    "schedule-free", "--bootstrap", 20, "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    for name, value in TRUTH.items():
        assert fit["params"][name] == pytest.approx(value, rel=1e-3), name
    n_points = 4 * (16 + 61)  # per size: steps 50..200 and 200..800 every 10 (min_fraction 0.25)
    assert fit["n_points"] == n_points
    assert fit["curve_points"] == {"mode": "schedule-free", "min_fraction": 0.25, "min_D": None, "runs": 8,
                                   "final": 8, "intermediate": n_points - 8}
    assert "(8 final, 300 intermediate)" in stderr and "resamples runs" in stderr

    code, _, stderr = run_cli(["loss", "--tracking-uri", store, "--curve-points", "schedule-free", "--out", out],
                              capsys)
    lines = [line for line in stderr.splitlines() if not line.startswith("[")]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: --curve-points schedule-free: 4 of 12 runs") and "4 cosine" in lines[0]

    code, _, stderr = run_cli(["loss", "--tracking-uri", store, "--sweep", "cos", "--curve-points", "all",
                               "--form", "L(N)", "--bootstrap", 0, "--out", out], capsys)
    assert code == 0, stderr
    assert json.loads(out.read_text())["curve_points"]["intermediate"] == 4 * 15

    code, _, stderr = run_cli(["loss", "--input", tmp_path / "t.csv", "--curve-points", "all"], capsys)
    assert code == 2 and "give --tracking-uri instead of --input" in stderr
