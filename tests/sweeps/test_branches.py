"""Critical-batch-size branches end to end: the design (snapshot and refusals), a real reference run that keeps
checkpoints, branches from them at several batch sizes (stage 1 after stage 0), their MLflow tags and params, exact
continuation at the reference's own batch, refusals before anything is recorded, and `lab-fit cbs` on the store.

Tiny models (experiment=smoke: seq_len 32, micro-batch 4); the reference trains 50 steps of 256 tokens.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lab.config import BatchConfig, ConfigError, ModelConfig
from lab.train import compose_config
from sweeps.branches import cbs
from sweeps.cli import run_sweep
from sweeps.designs import Base, DesignError, RunSpec, sci, tokens_label
from sweeps.catalog import expand

SNAPSHOT = Path(__file__).parent / "snapshots" / "cbs.json"
D, W = 12800, 2048
POINTS = (1280, 2560, 5120, 7680)
DESIGN = ["sweep=cbs", "hydra.sweeper.design.sizes=[1]", f"hydra.sweeper.design.tokens={D}",
          f"hydra.sweeper.design.checkpoint_tokens=[{','.join(map(str, POINTS))}]",
          f"hydra.sweeper.design.window_tokens={W}", "hydra.sweeper.design.batch_sequences=[16,32]"]


def overrides(workdir: Path, cache: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", "tracking.experiment=cbs", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
            f"checkpoint_dir={workdir}/ckpt", f"data.cache_dir={cache}", f"hydra.sweep.dir={workdir}/multirun",
            *extra]


def in_dir(workdir: Path, fn):
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow's default artifact root is ./mlruns
    try:
        return fn()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache_dir):
    """One reference (stage 0) and 4 checkpoints x 3 batches of branches (stage 1), in this process."""
    workdir = tmp_path_factory.mktemp("cbs")
    summary = in_dir(workdir, lambda: run_sweep([*DESIGN, "hydra.sweeper.id=cbs-test", *overrides(workdir, cache_dir)]))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("cbs")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.sweep = 'cbs-test'")}
    return workdir, summary, client, runs


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ------------------------------------------------------------------------------------------------------ design


def branch_name(T: int, b: int) -> str:
    return f"cbs-N1.26e4-D1.28e4-T{sci(T)}-B{tokens_label(b * 32)}-W2.05e3-s0"


def smoke_base() -> Base:
    return Base.from_config(ModelConfig(size=1, seq_len=32), BatchConfig(sequences=8, micro_batch=4), sizes=[1])


def test_snapshot_cbs():
    """Names and overrides are what a re-run finds its runs by; regenerate with UPDATE_SNAPSHOTS=1 and review."""
    got = [s.to_dict() for s in cbs(smoke_base(), tokens=D, checkpoint_tokens=[2560, 1280], window_tokens=W,
                                     batch_sequences=[32, 16], seeds=[0, 1])]
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(SNAPSHOT.read_text())
    assert [RunSpec.from_dict(d).to_dict() for d in got] == got  # the stage survives the round trip


def test_design_puts_the_reference_first_and_its_own_batch_among_the_branches():
    specs = cbs(smoke_base(), tokens=D, checkpoint_tokens=[1280], window_tokens=W, batch_sequences=[16])
    assert [s.stage for s in specs] == [0, 1, 1]
    ref, *branches = specs
    assert ref.name == "cbs-N1.26e4-D1.28e4-B256-ref-s0"
    assert "trainer.checkpoint_at_tokens=[1280]" in ref.overrides
    assert [s.name for s in branches] == ["cbs-N1.26e4-D1.28e4-T1.28e3-B256-W2.05e3-s0",
                                          "cbs-N1.26e4-D1.28e4-T1.28e3-B512-W2.05e3-s0"]
    assert ("init.checkpoint='${checkpoint_dir}/${tracking.experiment}/cbs-N1.26e4-D1.28e4-B256-ref-s0/"
            "tokens-1280.ckpt'") in branches[0].overrides
    assert expand({"name": "cbs", "sizes": [1], "tokens": D, "checkpoint_tokens": [1280], "window_tokens": W,
                   "batch_sequences": [16]}, ModelConfig(size=1, seq_len=32),
                  BatchConfig(sequences=8, micro_batch=4)) == specs


def test_the_shipped_sweep_config_expands_into_a_valid_study():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lab.train import CONF_MODULE

    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=["sweep=cbs"], return_hydra_config=True)
    specs = expand(OmegaConf.to_container(cfg.hydra.sweeper.design), OmegaConf.to_object(cfg.model),
                   OmegaConf.to_object(cfg.batch))
    assert [s.stage for s in specs].count(0) == 1 and len(specs) == 1 + 4 * 4  # 4 checkpoints x (3 batches + b_ref)
    typed = compose_config(list(specs[-1].overrides))  # a branch's overrides are a valid training config
    assert typed.init.window_tokens == 262144 and typed.batch.sequences == 128
    assert typed.init.checkpoint == f"checkpoints/default/{specs[0].name}/tokens-1048576.ckpt"  # interpolated


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint_tokens": [1000]}, "not the end of a reference step .* use 768 or 1024"),
    ({"checkpoint_tokens": [11264]}, "beyond the reference's D=12800 .* at most 10752"),
    ({"batch_sequences": [6]}, "not a multiple of batch.micro_batch=4 .* micro_batch x seq_len = 128 tokens"),
    ({"window_tokens": 1536}, "window_tokens=1536 .* use a multiple of 1024"),
    ({"lr_rescale": "cubic"}, "lr_rescale='cubic'"),
    ({"checkpoint_tokens": []}, "checkpoint_tokens is empty"),
])
def test_design_refuses_bad_input_naming_the_fix(kwargs, message):
    args = {"tokens": D, "checkpoint_tokens": [1280], "window_tokens": W, "batch_sequences": [16, 32], **kwargs}
    with pytest.raises(DesignError, match=message):
        cbs(smoke_base(), **args)


def test_sweep_with_a_bad_design_records_nothing(tmp_path, cache_dir):
    bad = [*DESIGN, "hydra.sweeper.design.window_tokens=12800"]
    with pytest.raises(DesignError, match="beyond the reference's D"):
        in_dir(tmp_path, lambda: run_sweep([*bad, *overrides(tmp_path, cache_dir)]))
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------- the real study


def test_reference_runs_first_and_keeps_its_checkpoints(study):
    workdir, summary, client, runs = study
    assert summary.complete and summary.counts()["finished"] == 1 + len(POINTS) * 3, summary.table()
    ref = runs["cbs-N1.26e4-D1.28e4-B256-ref-s0"]
    branches = [r for name, r in runs.items() if r is not ref]
    assert all(ref.info.end_time <= b.info.start_time for b in branches), "branches start after the reference"
    folder = workdir / "ckpt" / "cbs" / ref.info.run_name
    for T in POINTS:
        record = json.loads((folder / f"tokens-{T}.json").read_text())
        assert (folder / f"tokens-{T}.ckpt").is_file()
        assert record["run_id"] == ref.info.run_id and record["tokens"] == T and record["step"] == T // 256
        assert record["sequences"] == 8 and record["lr_schedule"]["total_tokens"] == D


def test_branches_are_tagged_for_lab_fit_and_rescale_the_lr(study):
    _, _, client, runs = study
    ref = runs["cbs-N1.26e4-D1.28e4-B256-ref-s0"]
    ref_lr = dict(history(client, ref.info.run_id, "lr"))
    for T in POINTS:
        for b in (8, 16, 32):
            run = runs[branch_name(T, b)]
            tags, params = run.data.tags, run.data.params
            assert tags["branch_of"] == ref.info.run_id and tags["checkpoint_tokens"] == str(T)
            assert tags["role"] == "branch" and tags["design"] == "cbs"
            assert params["branch.window_tokens"] == str(W) and params["init.lr_rescale"] == "sqrt"
            assert float(params["branch.lr_factor"]) == pytest.approx(math.sqrt(b / 8))
            assert params["B_tokens"] == str(b * 32) and params["branch.B_ref_tokens"] == "256"
            tokens = history(client, run.info.run_id, "tokens")
            assert tokens[0] == (1, T + b * 32) and tokens[-1][1] == T + W  # the window, counted from T
            step1_lr = history(client, run.info.run_id, "lr")[0][1]
            assert step1_lr == pytest.approx(ref_lr[(T + b * 32) // 256] * math.sqrt(b / 8), rel=1e-12)


def test_the_branch_at_the_reference_batch_repeats_the_reference_exactly(study):
    _, _, client, runs = study
    ref = runs["cbs-N1.26e4-D1.28e4-B256-ref-s0"]
    ref_loss = history(client, ref.info.run_id, "train/loss")
    for T in POINTS:
        branch = runs[branch_name(T, 8)]
        got = [v for _, v in history(client, branch.info.run_id, "train/loss")]
        assert got == [v for _, v in ref_loss[T // 256:(T + W) // 256]]  # same weights, optimizer, data, lr


def test_lab_fit_cbs_reads_the_store_and_gives_a_local_cbs_per_checkpoint(study, tmp_path, capsys):
    from analysis.cli import main

    workdir, summary, _, _ = study
    out = tmp_path / "cbs.json"
    code = main(["cbs", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--sweep", summary.sweep_id,
                 "--bootstrap", "50", "--granularity", "4", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["reference_B"] == 256, "the reference's batch, as every branch records it"
    local = {row["checkpoint_tokens"]: row for row in result["local"]}
    assert sorted(local) == list(POINTS)
    for row in local.values():
        assert row["n_branches"] == 3 and row["censored"] in ("none", "above")
        assert row["cbs"] in (256, 512, 1024)
    assert sum(row["censored"] == "none" for row in local.values()) >= 3
    assert result["curve"]["power"]["params"]["exp"] >= 0
    assert result["warmup"]["seq_len"] == 32


# ------------------------------------------------------------------------------------------- refusals in lab


def branch_cfg(workdir: Path, cache: Path, *extra: str):
    return compose_config(["experiment=smoke", "tracking.experiment=cbs", f"checkpoint_dir={workdir}/ckpt",
                           f"data.cache_dir={cache}", "budget.tokens=12800", "batch.sequences=16",
                           f"init.checkpoint={workdir}/ckpt/cbs/cbs-N1.26e4-D1.28e4-B256-ref-s0/tokens-2560.ckpt",
                           "init.tokens=2560", "init.window_tokens=2048", *extra])


@pytest.mark.parametrize("extra, message", [
    (["init.checkpoint=/nonexistent/tokens-2560.ckpt"], "no such checkpoint; train the reference run with "
                                                       r"trainer.checkpoint_at_tokens"),
    (["init.tokens=2048"], "taken at 2560 tokens; use init.tokens=2560"),
    (["init.window_tokens=11264"], "goes beyond the reference's D = 12800 .* at most 10240"),
    (["init.window_tokens=1280"], "whole number of steps of 512 tokens .* use 1024"),
    (["model.size=2"], "config error: model.d_model=64: the reference of tokens-2560.ckpt has 32"),
    (["seed=1"], "config error: seed=1: the reference of tokens-2560.ckpt has 0"),
    (["optim.lr=1e-2"], "optim.lr=0.01"),
])
def test_a_branch_that_cannot_continue_its_reference_fails_before_recording(study, cache_dir, extra, message):
    from lab.run import prepare

    workdir = study[0]
    with pytest.raises(ConfigError, match=message):
        prepare(branch_cfg(workdir, cache_dir, *extra))


def test_config_rules_of_branches_and_branch_points(tmp_path, cache_dir):
    from lab.run import prepare

    with pytest.raises(ConfigError, match="init.window_tokens need init.checkpoint"):
        compose_config(["experiment=smoke", "init.window_tokens=2048"])
    with pytest.raises(ConfigError, match="use batch=constant"):
        compose_config(["experiment=smoke", "batch=stepwise", "batch.micro_batch=4", "init.checkpoint=x.ckpt",
                        "init.tokens=256", "init.window_tokens=256"])
    with pytest.raises(ConfigError, match="increasing positive"):
        compose_config(["experiment=smoke", "trainer.checkpoint_at_tokens=[512,256]"])
    ref = ["experiment=smoke", f"data.cache_dir={cache_dir}", f"checkpoint_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="no step ends at 1000 tokens .* use 768 or 1024"):
        prepare(compose_config([*ref, "trainer.checkpoint_at_tokens=[1000]"]))
    with pytest.raises(ConfigError, match="the run ends at D=12800 tokens"):
        prepare(compose_config([*ref, "trainer.checkpoint_at_tokens=[12800]"]))


def test_branches_wait_for_a_reference_that_did_not_finish(tmp_path, cache_dir):
    # A loss ceiling below any real loss: the reference diverges at its first step, so no checkpoint exists.
    summary = in_dir(tmp_path, lambda: run_sweep([*DESIGN, "hydra.sweeper.id=cbs-diverged", "trainer.max_loss=0.5",
                                                  *overrides(tmp_path, cache_dir)]))
    counts = summary.counts()
    assert counts["failed"] == 1 and counts["not_run"] == len(POINTS) * 3 and not summary.complete
    waiting = [o for o in summary.outcomes if o.status == "NOT_RUN"]
    assert all("waits for unfinished run(s) cbs-N1.26e4-D1.28e4-B256-ref-s0" in o.reason for o in waiting)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cbs")
    assert len(client.search_runs([exp.experiment_id], "tags.role = 'branch'")) == 0
