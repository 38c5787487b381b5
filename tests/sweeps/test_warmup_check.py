"""The batch-warmup check end to end: the design (snapshot, lr rule, refusals, shipped config), then a real tiny sweep
of the smoke model into a SQLite store and `lab-fit warmup-check` on it (steps saved, loss differences).

Tiny runs (experiment=smoke: seq_len 32, micro-batch 4) on D = 12,288 tokens: the warmup goes 4 -> 8 -> 16
sequences (34 steps), the constants train 96 steps of 4 and 24 steps of 16 sequences.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from lab.config import BatchConfig, ModelConfig
from sweeps.catalog import expand
from sweeps.designs import Base, DesignError, RunSpec
from sweeps.warmup_check import warmup_check
from tracking.record import Artifact, Design, Role, Tag

SNAPSHOT = Path(__file__).parent / "snapshots" / "warmup_check.json"
D = 12288
MILESTONES = [[1024, 8], [3072, 16]]
DESIGN = ["sweep=warmup_check", "hydra.sweeper.design.sizes=[1]", f"hydra.sweeper.design.tokens={D}",
          "hydra.sweeper.design.start_sequences=4", "hydra.sweeper.design.milestones=[[1024,8],[3072,16]]",
          "hydra.sweeper.design.lr=3e-3"]


def smoke_base() -> Base:
    return Base.from_config(ModelConfig(size=1, seq_len=32), BatchConfig(sequences=8, micro_batch=4), sizes=[1])


def design(**changes) -> list[RunSpec]:
    params = {"tokens": D, "lr": 3e-3, "milestones": MILESTONES, "start_sequences": 4, **changes}
    return warmup_check(smoke_base(), **params)


def test_snapshot_warmup_check():
    """Names and overrides are what a re-run finds its runs by; regenerate with UPDATE_SNAPSHOTS=1 and review."""
    got = [s.to_dict() for s in design(seeds=[0, 1])]
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(SNAPSHOT.read_text())


def test_three_runs_per_seed_on_the_same_tokens_with_the_same_lr_rule():
    warmup, final, start = design(lr_rescale="linear")
    assert [s.tags[Tag.ROLE] for s in (warmup, final, start)] == [Role.BATCH_WARMUP, Role.CONSTANT_FINAL,
                                                                   Role.CONSTANT_START]
    assert {s.tags[Tag.DESIGN] for s in (warmup, final, start)} == {Design.WARMUP_CHECK}
    assert {s.tags[Tag.POINT] for s in (warmup, final, start)} == {"N1.26e4-D1.23e4"}
    for s in (warmup, final, start):
        assert f"budget.tokens={D}" in s.overrides and "seed=0" in s.overrides
        assert "batch.lr_rescale=linear" in s.overrides
    assert "batch.milestones=[[1024,8],[3072,16]]" in warmup.overrides and "optim.lr=0.003" in warmup.overrides
    assert "batch.sequences=16" in final.overrides and "optim.lr=0.012" in final.overrides  # 3e-3 x 16/4
    assert "batch.sequences=4" in start.overrides and "optim.lr=0.003" in start.overrides
    sqrt_final = design()[1]
    assert f"optim.lr={3e-3 * math.sqrt(4)!r}" in sqrt_final.overrides
    assert design(lr=1e-3)[0].name != design()[0].name, "lr changes the trajectory: it is in the name"
    assert design(milestones=[[2048, 8], [3072, 16]])[0].name != design()[0].name
    off_step = design(milestones=[[1000, 8], [3072, 16]])[0]  # lab changes the batch at the next step, at 1024
    assert "batch.milestones=[[1000,8],[3072,16]]" in off_step.overrides, "the plan as lab-fit cbs gives it"


def test_the_design_expands_from_config_and_composes_into_valid_runs():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lab.train import CONF_MODULE, compose_config

    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=["sweep=warmup_check"], return_hydra_config=True)
    specs = expand(OmegaConf.to_container(cfg.hydra.sweeper.design), OmegaConf.to_object(cfg.model),
                   OmegaConf.to_object(cfg.batch))
    assert len(specs) == 3 and len({s.name for s in specs}) == 3
    for spec in design():
        compose_config(["experiment=smoke", *spec.overrides])  # validated as lab-train validates it


@pytest.mark.parametrize("changes, message", [
    ({"milestones": []}, "milestones is empty"),
    ({"milestones": [[1024, 8], [1024, 16]]}, "strictly increase"),
    ({"milestones": [[1024, 4]]}, "must exceed"),
    ({"milestones": [[1024, 6], [3072, 16]]}, "multiple of batch.micro_batch=4"),
    ({"tokens": 3072}, "must exceed the last milestone"),
    ({"tokens": 12300}, "e.g. 12800"),
    ({"lr": 0}, "positive peak lr"),
    ({"lr_rescale": "cubic"}, "use one of"),
    ({"seeds": [0, 0]}, "distinct"),
])
def test_bad_designs_are_refused_with_the_fix(changes, message):
    with pytest.raises(DesignError, match=message):
        design(**changes)


# ------------------------------------------------------------------------------------------ the sweep and lab-fit


@pytest.fixture(scope="module")
def check_sweep(tmp_path_factory):
    """The three runs of one seed of the smoke model, in this process, into a SQLite store."""
    from sweeps.cli import run_sweep

    workdir = tmp_path_factory.mktemp("warmup_check")
    overrides = ["experiment=smoke", "tracking.experiment=warmup_check", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
                 f"checkpoint_dir={workdir}/ckpt", f"data.cache_dir={workdir}/cache",
                 f"hydra.sweep.dir={workdir}/multirun", "hydra.sweeper.id=wuc-test"]
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow's default artifact root is ./mlruns
    try:
        summary = run_sweep([*DESIGN, *overrides])
    finally:
        os.chdir(cwd)
    return workdir, summary


def test_lab_fit_warmup_check_reports_steps_saved_and_the_loss_difference(check_sweep, tmp_path, capsys):
    from analysis.cli import main

    workdir, summary = check_sweep
    assert [o.status for o in summary.outcomes] == ["FINISHED"] * 3
    out = tmp_path / "check.json"
    code = main(["warmup-check", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--sweep", summary.sweep_id,
                 "--out", str(out), "--log"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "steps saved" in printed.out and "ΔL vs final B" in printed.out
    print(printed.out)  # the figures of the report (pytest -s)
    assert f"logged fits/warmup-check/{Artifact.LAW}" in printed.err, "the check rides on the sweep's parent run"
    result = json.loads(out.read_text())
    (pair,) = result["pairs"]
    # warmup: 1024/128 + 2048/256 + 9216/512 = 34 steps; constants: 12288/128 = 96 and 12288/512 = 24 steps
    assert (pair["steps_warmup"], pair["steps_start"], pair["steps_final"]) == (34, 96, 24)
    assert pair["D_warmup"] == pair["D_final"] == pair["D_start"] == D, "the same tokens"
    assert pair["steps_saved"] == pytest.approx(1 - 34 / 96) and pair["steps_saved"] > 0
    assert math.isfinite(pair["loss_diff_final"]) and math.isfinite(pair["loss_diff_start"])
    assert pair["loss_diff_final"] == pytest.approx(pair["loss_warmup"] - pair["loss_final"])
    mean = result["means"]["N1.26e4-D1.23e4"]
    assert mean["steps_saved"]["mean"] == pytest.approx(pair["steps_saved"]) and mean["steps_saved"]["stderr"] is None


def test_lab_fit_warmup_check_on_a_store_without_such_runs_says_what_to_run(check_sweep, capsys):
    from analysis.cli import main

    workdir, _ = check_sweep
    code = main(["warmup-check", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--experiment", "nothing", "-q"])
    assert code == 2 and "error:" in capsys.readouterr().err
