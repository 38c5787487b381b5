"""analysis.points: which runs are points of which law, on small frames shaped like analysis.load.load_runs."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest

from analysis.points import (BRANCH_OF, CHECKPOINT_TOKENS, DESIGN, SCHEDULE_NAME, OPTIM_SCHEDULE, REFERENCE_B, ROLE,
                             SWEEP, SWEEP_PARENT, cbs_settings, default_sweep, law_points, schedule_runs)
from tracking.record import Design, Role


def runs_frame(rows: list[dict]) -> pl.DataFrame:
    base = {"run_id": None, "run_name": None, "status": "FINISHED", SWEEP: None, DESIGN: None, "N": 1e5, "D": 1e7,
            "C": 1.0, "B": 256.0, "lr": 1e-3, "loss": 3.0, "seq_len": 32.0, "start_time": None,
            SWEEP_PARENT: None, BRANCH_OF: None, CHECKPOINT_TOKENS: None, REFERENCE_B: None}
    out = []
    for i, row in enumerate(rows):
        full = {**base, "run_id": f"r{i}", "run_name": f"run{i}", **row}
        full["start_time"] = full["start_time"] or datetime(2026, 1, 1, i // 60, i % 60, tzinfo=timezone.utc)
        out.append(full)
    return pl.DataFrame(out, schema_overrides={c: pl.String for c in (SWEEP, DESIGN, SWEEP_PARENT, BRANCH_OF,
                                                                        CHECKPOINT_TOKENS, REFERENCE_B)})


def test_loss_points_are_finished_from_scratch_runs_of_a_loss_design_at_C_6ND():
    runs = runs_frame([
        {SWEEP: "grid", DESIGN: Design.GRID, "N": 1e5, "D": 1e7},
        {SWEEP: "grid", DESIGN: Design.GRID, "N": 1e6, "D": 1e7},
        {SWEEP: "grid", DESIGN: Design.GRID, "status": "FAILED"},
        {SWEEP: "grid", DESIGN: Design.GRID, "loss": float("nan")},
        {SWEEP: "grid", DESIGN: Design.GRID, "loss": None},
        {SWEEP: "lr", DESIGN: Design.LR_BATCH},
        {SWEEP: "cbs", DESIGN: Design.CBS, BRANCH_OF: "r0", CHECKPOINT_TOKENS: "1000"},
        {SWEEP: "grid", SWEEP_PARENT: "grid", DESIGN: None},
        {SWEEP: None, DESIGN: None, "N": 2e5},  # trained by hand: kept
    ])
    found = law_points(runs, "loss")
    assert found.run_ids == ["r0", "r1", "r8"]
    assert (found.frame["C"] == 6 * found.frame["N"] * found.frame["D"]).all()
    notes = " ".join(found.notes)
    assert "leaving out 1 critical-batch-size branch" in notes and "left out 1 runs of design ['lr_batch']" in notes
    assert "skipping 1 finished runs lacking" in notes
    assert any("carry no design tag" in m for m in found.mixed) and any("2 sweeps" in m for m in found.mixed)


def test_hparam_points_need_an_lr_batch_design_and_two_configurations_per_cell():
    runs = runs_frame([
        *({SWEEP: "lr", DESIGN: Design.LR_BATCH, "N": 1e5, "lr": lr, "B": B}
          for lr in (1e-3, 3e-3) for B in (128.0, 256.0)),
        {SWEEP: "lr", DESIGN: Design.LR_BATCH, "N": 1e6},  # a cell of one configuration
        {SWEEP: "lr", DESIGN: Design.LR_BATCH, "N": 1e6},  # a replicate is no second configuration
        {SWEEP: "iso", DESIGN: Design.ISOFLOP, "N": 3e5},
    ])
    found = law_points(runs, "hparams")
    assert found.frame.height == 4 and set(found.frame["N"].to_list()) == {1e5}
    assert "fewer than 2 (lr, B) configurations" in " ".join(found.notes)


def test_the_default_sweep_is_the_most_recent_made_for_the_law():
    runs = runs_frame([
        {SWEEP: "grid-old", DESIGN: Design.GRID}, {SWEEP: "iso-new", DESIGN: Design.ISOFLOP},
        {SWEEP: "lr", DESIGN: Design.LR_BATCH}, {SWEEP: "cbs", DESIGN: Design.CBS, BRANCH_OF: "r0"},
        {SWEEP: "cbs", DESIGN: Design.CBS},  # the reference run of the CBS sweep: no branch
    ])
    assert default_sweep(runs, "loss") == "iso-new" and default_sweep(runs, "hparams") == "lr"
    assert default_sweep(runs, "cbs") == "cbs" and default_sweep(runs_frame([{SWEEP: "x"}]), "loss") is None
    assert default_sweep(runs, "schedule") is None
    study = runs_frame([{SWEEP: "sched", DESIGN: Design.SCHEDULES}, {SWEEP: "iso-new", DESIGN: Design.ISOFLOP}])
    assert default_sweep(study, "schedule") == "sched"
    with pytest.raises(ValueError, match="law must be one of"):
        default_sweep(runs, "schedules")


def test_cbs_points_are_the_branches_and_the_plan_settings_come_from_their_reference():
    runs = runs_frame([
        {SWEEP: "cbs", DESIGN: Design.CBS, "D": 1e6, "seq_len": 64.0, "param.batch.micro_batch": "4"},
        *({SWEEP: "cbs", DESIGN: Design.CBS, BRANCH_OF: "r0", CHECKPOINT_TOKENS: "100000", "B": B,
           REFERENCE_B: "256", "param.batch.micro_batch": "4"} for B in (256.0, 512.0)),
    ])
    found = law_points(runs, "cbs")
    assert found.frame["checkpoint_tokens"].to_list() == [1e5, 1e5]
    assert found.frame["reference"].to_list() == ["r0"] * 2
    settings = cbs_settings(runs, found)
    assert (settings.seq_len, settings.total_tokens, settings.reference_B, settings.granularity) == (64, 1e6, 256.0, 4)


def schedule_frame(rows: list[dict]) -> pl.DataFrame:
    """Runs with the schedule columns: a study's tags (schedule_name, role) and lab-train's optim.schedule."""
    full = [{SCHEDULE_NAME: None, ROLE: None, OPTIM_SCHEDULE: None, **row} for row in rows]
    return runs_frame(full).with_columns(pl.col(SCHEDULE_NAME, ROLE, OPTIM_SCHEDULE).cast(pl.String))


def test_the_schedule_law_takes_the_latest_schedule_study_fit_runs_and_predicts_its_held_out_ones():
    study = [{SWEEP: sweep, DESIGN: Design.SCHEDULES, SCHEDULE_NAME: shape, ROLE: role, "N": 2e6, "B": 4096.0}
             for sweep in ("sched-old", "sched-new")
             for shape, role in (("cosine", Role.FIT), ("constant", Role.FIT), ("step", Role.FIT),
                                 ("wsd", Role.HELD_OUT), ("cosine-short", None))]
    bigger = [{OPTIM_SCHEDULE: shape, "N": 5e6, "B": 8192.0} for shape in ("cosine", "constant") * 5]
    runs = schedule_frame([*study, *bigger])
    chosen = schedule_runs(runs)
    assert chosen.sweep == "sched-new" and (chosen.N, chosen.B) == (2e6, 4096.0)
    assert chosen.fit == ("r5", "r6", "r7") and chosen.held_out == ("r8",)
    assert "1 runs with neither role left out" in chosen.note
    unfinished = runs.with_columns(status=pl.when(pl.col(SWEEP) == "sched-new").then(pl.lit("RUNNING"))
                                   .otherwise(pl.col("status")))
    assert schedule_runs(unfinished).sweep == "sched-old"  # a study still running has no fit runs to take yet


def test_without_a_study_the_schedule_law_takes_the_largest_group_of_one_N_and_B_under_two_schedules():
    one_schedule = [{OPTIM_SCHEDULE: "cosine", "N": 1e6, "B": 1024.0}] * 6  # larger, but one schedule: no law
    mixed_B = [{OPTIM_SCHEDULE: s, "N": 3e6, "B": b} for s, b in (("cosine", 1024.0), ("constant", 2048.0))]
    group = [{OPTIM_SCHEDULE: s, "N": 2e6, "B": 512.0} for s in ("cosine", "cosine", "constant", "wsd", "step")]
    small = [{SCHEDULE_NAME: s, "N": 4e6, "B": 512.0} for s in ("cosine", "wsd")]
    chosen = schedule_runs(schedule_frame([*one_schedule, *mixed_B, *group, *small]))
    assert chosen.sweep is None and (chosen.N, chosen.B) == (2e6, 512.0)
    assert chosen.fit == ("r8", "r10", "r11") and chosen.held_out == ("r9", "r12")  # the first of 3 schedules
    assert schedule_runs(schedule_frame([*one_schedule, *mixed_B])) is None  # nothing is one law's runs
    assert schedule_runs(runs_frame([{"N": 1e6}, {"N": 2e6}])) is None  # no run records a schedule
