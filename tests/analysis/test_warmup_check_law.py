"""The batch-warmup check's arithmetic on small frames: steps saved, the sign of the loss differences, means over
seeds with standard errors, incomplete pairs left out with a note, and bad input refused (analysis.laws.warmup_check).
The same check on a real sweep of the smoke model: tests/sweeps/test_warmup_check.py."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from analysis.cli import main
from analysis.laws.warmup_check import check_warmup
from analysis.points import warmup_check_points
from analysis.report import warmup_check_report
from analysis.validate import PointsError
from tracking.record import Design, Param, Role, Tag

POINT = "N1e4-D1e4"


def runs(seed: int, warmup: float, final: float, start: float, steps=(34, 24, 96), D=(12288, 12288, 12288),
         point: str = POINT) -> list[dict]:
    roles = (Role.BATCH_WARMUP, Role.CONSTANT_FINAL, Role.CONSTANT_START)
    return [{"run_name": f"{point}-{role}-s{seed}", "point": point, "seed": str(seed), "role": role, "steps": s,
             "D": float(d), "loss": loss} for role, s, d, loss in zip(roles, steps, D, (warmup, final, start))]


def test_steps_saved_and_loss_differences_per_seed_and_mean():
    check = check_warmup(pl.DataFrame(runs(0, 3.10, 3.20, 3.12) + runs(1, 3.11, 3.22, 3.10)))
    p0, p1 = check.pairs
    assert p0.steps_saved == pytest.approx(1 - 34 / 96) and p0.step_ratio_final == pytest.approx(34 / 24)
    assert p0.loss_diff_final == pytest.approx(-0.10), "negative: the warmup reached the lower loss"
    assert p0.loss_diff_start == pytest.approx(-0.02) and p1.loss_diff_start == pytest.approx(+0.01)
    mean = check.means[POINT]["loss_diff_start"]
    assert mean.mean == pytest.approx(-0.005)
    assert mean.stderr == pytest.approx(abs(-0.02 - 0.01) / math.sqrt(2) / math.sqrt(2))  # sd/sqrt(n), n = 2
    assert check.means[POINT]["steps_saved"].stderr == pytest.approx(0.0)
    text = warmup_check_report(check)
    assert "64.6%" in text and "-0.1000" in text and "-0.0050 ± 0.0150" in text
    assert json.loads(json.dumps(check.to_dict()))["pairs"][0]["steps_saved"] == pytest.approx(1 - 34 / 96)


def test_an_incomplete_seed_is_left_out_and_named():
    check = check_warmup(pl.DataFrame(runs(0, 3.1, 3.2, 3.1) + runs(1, 3.1, 3.2, 3.1)[:1]))
    assert [p.seed for p in check.pairs] == ["0"]
    assert check.means[POINT]["steps_saved"].stderr is None
    assert len(check.notes) == 1 and "seed 1" in check.notes[0] and Role.CONSTANT_FINAL in check.notes[0]


def test_runs_on_different_tokens_are_flagged():
    check = check_warmup(pl.DataFrame(runs(0, 3.1, 3.2, 3.1, D=(12288, 12288, 6144))))
    assert "not the same tokens" in check.notes[0]


@pytest.mark.parametrize("rows, message", [
    (runs(0, 3.1, 3.2, 3.1)[:2], "no \\(point, seed\\) has all"),
    (runs(0, 3.1, 3.2, 3.1) + runs(0, 3.1, 3.2, 3.1), "more than one run"),
    (runs(0, float("nan"), 3.2, 3.1), "finite final val/loss"),
    (runs(0, 3.1, 3.2, 3.1, steps=(34, 0, 96)), "positive step count"),
])
def test_bad_input_is_refused(rows, message):
    with pytest.raises(PointsError, match=message):
        check_warmup(pl.DataFrame(rows))


def test_missing_columns_are_named():
    with pytest.raises(PointsError, match="'steps'"):
        check_warmup(pl.DataFrame(runs(0, 3.1, 3.2, 3.1)).drop("steps"))


def test_points_take_the_design_tags_and_the_steps_param():
    base = {"status": "FINISHED", "sweep": "w", "B": 512.0, "lr": 3e-3, "steps": 99}
    rows = [{**base, "run_id": r["run_name"], "run_name": r["run_name"], Tag.DESIGN: Design.WARMUP_CHECK,
             "D": r["D"], "loss": r["loss"], f"param.{Param.STEPS}": float(r["steps"]),
             f"tag.{Tag.POINT}": r["point"], f"tag.{Tag.SEED}": r["seed"], f"tag.{Tag.ROLE}": r["role"]}
            for r in runs(0, 3.1, 3.2, 3.1)]
    other = {**rows[0], "run_id": "x", "run_name": "x", Tag.DESIGN: Design.GRID}
    failed = {**rows[0], "run_id": "y", "run_name": "y", "status": "FAILED"}
    points = warmup_check_points(pl.DataFrame([*rows, other, failed]))
    assert points.frame["run_name"].to_list() == [r["run_name"] for r in rows]
    assert points.frame["steps"].to_list() == [34, 24, 96], "the steps param, not the last logged step"
    assert "y" in points.notes[0]
    assert check_warmup(points.frame).pairs[0].steps_saved == pytest.approx(1 - 34 / 96)


def test_cli_on_a_table(tmp_path, capsys):
    table = tmp_path / "check.csv"
    pl.DataFrame(runs(0, 3.10, 3.20, 3.12)).write_csv(table)
    out = tmp_path / "check.json"
    assert main(["warmup-check", "--input", str(table), "--out", str(out), "-q"]) == 0
    assert "steps saved" in capsys.readouterr().out
    assert json.loads(out.read_text())["means"][POINT]["loss_diff_final"]["mean"] == pytest.approx(-0.10)
    pl.DataFrame(runs(0, 3.10, 3.20, 3.12)).drop("role").write_csv(table)
    assert main(["warmup-check", "--input", str(table), "-q"]) == 2
    assert "missing column(s) ['role']" in capsys.readouterr().err


def test_the_cbs_plan_gives_the_lab_sweep_overrides_of_its_check():
    from lab.config import BatchConfig, ModelConfig
    from sweeps.catalog import expand
    from analysis.laws.cbs import BatchWarmupPlan

    plan = BatchWarmupPlan(start_sequences=4, milestones=((1024, 8), (3072, 16)), seq_len=32)
    overrides = plan.check_overrides(12000)
    assert overrides == [f"sweep={Design.WARMUP_CHECK}", "hydra.sweeper.design.tokens=12288",
                         "hydra.sweeper.design.start_sequences=4",
                         "hydra.sweeper.design.milestones=[[1024,8],[3072,16]]"]
    design = {"name": Design.WARMUP_CHECK, "sizes": [1], "tokens": 12288, "lr": 3e-3, "start_sequences": 4,
              "milestones": [list(m) for m in plan.milestones]}
    specs = expand(design, ModelConfig(size=1, seq_len=32), BatchConfig(sequences=8, micro_batch=4))
    assert [s.tags[Tag.ROLE] for s in specs] == [Role.BATCH_WARMUP, Role.CONSTANT_FINAL, Role.CONSTANT_START]
    assert plan.check_overrides(100)[1] == "hydra.sweeper.design.tokens=3584", "past the last milestone"
    with pytest.raises(ValueError, match="no warmup to check"):
        BatchWarmupPlan(start_sequences=4, milestones=(), seq_len=32).check_overrides(1e4)


def test_the_promise_is_kept_within_the_cbs_tolerance_of_the_start_batch():
    check = check_warmup(pl.DataFrame(runs(0, 3.12, 3.2, 3.10) + runs(1, 3.20, 3.2, 3.10)))
    assert [p.kept(0.01) for p in check.pairs] == [True, False]  # 3.12 <= 3.10 x 1.01 = 3.131; 3.20 is not
    assert check.kept == 1 and check.to_dict()["kept"] == 1
    assert check_warmup(pl.DataFrame(runs(0, 3.20, 3.2, 3.10)), tolerance=0.05).kept == 1
    assert "at 1 of 2 (point, seed)" in warmup_check_report(check)
    with pytest.raises(ValueError, match="tolerance"):
        check_warmup(pl.DataFrame(runs(0, 3.1, 3.2, 3.1)), tolerance=0)
