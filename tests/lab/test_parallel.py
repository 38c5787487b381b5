"""DDP and FSDP2 on the CPU (2 gloo processes launched by Lightning from lab-train) against one process.

Same data, seed and global batch: one process runs 4 micro-batches of 4 sequences per step, each of the 2 ranks
runs 2. The FSDP run is SIGKILLed after its first sharded checkpoint and resumed, so one launch pair checks both
that FSDP reproduces the single-process curve and that sharded checkpoints save and resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lab import parallel
from lab.run import train
from lab.train import compose_config

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")
STEPS = 100
COMMON = ("experiment=smoke", "batch.sequences=16", "batch.micro_batch=4", f"budget.tokens={STEPS * 16 * 32}",
          "trainer.checkpoint_every_steps=20", "trainer.progress_bar=false")


def overrides(workdir: Path, name: str, *extra: str) -> list[str]:
    return [*COMMON, f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", f"tracking.run_name={name}", *extra]


def launch(workdir: Path, *args: str) -> subprocess.Popen:
    # A session of its own: Lightning's rank-1 child joins it, so one killpg ends both ranks.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([LAB_TRAIN, *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]
    return out


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def run_id_of(workdir: Path, name: str) -> str:
    return json.loads((workdir / "ckpt" / "smoke" / name / "run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process reference, DDP, and FSDP killed after its first checkpoint then resumed."""
    work = tmp_path_factory.mktemp("parallel")
    compose_config(overrides(work, "x"))  # fail here, not in a subprocess, on a bad override
    ddp = launch(work, *overrides(work, "ddp", "trainer=ddp"))
    fsdp = launch(work, *overrides(work, "fsdp", "trainer=fsdp"))
    single = train(compose_config(overrides(work, "single", "trainer.threads=1")))

    meta = work / "ckpt" / "smoke" / "fsdp" / "last.ckpt" / "meta.pt"  # written after every rank's shard
    deadline = time.monotonic() + 600
    while not meta.exists() and fsdp.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fsdp.poll() is None, "the FSDP run ended before it could be killed: " + fsdp.stderr.read()[-3000:]
    os.killpg(fsdp.pid, signal.SIGKILL)  # both ranks
    fsdp.wait(timeout=60)
    shards = sorted(p.name for p in meta.parent.glob("*.distcp"))
    resumed = launch(work, *overrides(work, "fsdp", "trainer=fsdp", "resume=true"))
    finish(ddp)
    finish(resumed)
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    return client, single.run_id, run_id_of(work, "ddp"), run_id_of(work, "fsdp"), shards


def assert_curves_match(client, run_id, ref_id, key, tol):
    got, want = history(client, run_id, key), history(client, ref_id, key)
    assert [s for s, _ in got] == [s for s, _ in want], f"{key}: steps differ"
    worst = max(abs(a - b) / max(abs(b), 1.0) for (_, a), (_, b) in zip(got, want))
    assert worst < tol, f"{key}: worst difference {worst:.3g}"


def test_ddp_reproduces_single_process_curve(runs):
    client, single, ddp, _, _ = runs
    assert client.get_run(ddp).info.status == "FINISHED"
    assert [s for s, _ in history(client, ddp, "train/loss")] == list(range(1, STEPS + 1))
    for key in ("train/loss", "grad_norm", "val/loss"):
        assert_curves_match(client, ddp, single, key, tol=1e-4)
    # Rank 0's first micro-batch is the single process's first one, and it is measured before any all-reduce
    # (block_backward_sync): so the noise scale's small-batch gradient, hence B_simple, matches too.
    assert_curves_match(client, ddp, single, "noise/b_simple", tol=1e-3)
    assert history(client, ddp, "throughput/flops_per_s") and history(client, ddp, "throughput/peak_memory_mb")
    params = client.get_run(ddp).data.params
    assert params["trainer.strategy"] == "ddp" and params["trainer.devices"] == "2"


def test_fsdp_checkpoint_is_sharded_and_resumes_into_the_single_process_curve(runs):
    client, single, _, fsdp, shards = runs
    assert shards == ["__0_0.distcp", "__1_0.distcp"], "one shard file per rank"
    run = client.get_run(fsdp)
    assert run.info.status == "FINISHED" and run.data.params["trainer.strategy"] == "fsdp"
    steps = [s for s, _ in history(client, fsdp, "train/loss")]
    assert steps == list(range(1, STEPS + 1)), "every step exactly once across the kill"
    # grad_norm is the full norm over both ranks' gradient shards (DTensor): it must equal the whole one.
    for key in ("train/loss", "grad_norm", "val/loss"):
        assert_curves_match(client, fsdp, single, key, tol=1e-4)
    b = [v for _, v in history(client, fsdp, "noise/b_simple")]
    assert b and all(v > 0 for v in b[1:]), "FSDP's small batch is one micro-batch from every rank"
    assert history(client, fsdp, "throughput/peak_memory_mb")[-1][1] > 0


def test_sharded_grad_norm_equals_whole_norm_on_a_one_rank_mesh(one_rank_group, twin_gpts):
    from torch.distributed.device_mesh import init_device_mesh

    whole, sharded = twin_gpts(vocab_size=32, seq_len=8, d_model=16)
    parallel.shard(sharded, init_device_mesh("cpu", (1,)))
    x = torch.randint(0, 32, (2, 8))
    for m in (whole, sharded):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    assert any(parallel._is_dtensor(p.grad) for p in sharded.parameters())
    expected = float(parallel.grad_sq_norm(whole.parameters()))
    assert float(parallel.grad_sq_norm(sharded.parameters())) == pytest.approx(expected, rel=1e-5)
    norm = parallel.clip_grad_norm(sharded.parameters(), max_norm=0.5 * expected**0.5)
    assert float(norm) == pytest.approx(expected**0.5, rel=1e-5)
    assert float(parallel.grad_sq_norm(sharded.parameters())) == pytest.approx(0.25 * expected, rel=1e-4)


def test_strategy_names_map_to_lightning():
    from lightning.pytorch.strategies import ModelParallelStrategy

    cfg = compose_config(["experiment=smoke", "trainer=fsdp", "trainer.devices=4", "batch.sequences=16"])
    strategy = parallel.lightning_strategy(cfg.trainer)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (4, 1), "pure FSDP over every rank"
    assert parallel.lightning_strategy(compose_config(["experiment=smoke", "trainer=ddp"]).trainer) == "ddp"
    assert parallel.from_config(cfg.trainer, steps=50).sharded


@pytest.mark.parametrize(("accelerator", "steps", "expected"), [
    ("cpu", 50, False),  # the smoke run: a compile would cost 20x the run
    ("cpu", 999, False),
    ("cpu", 1_000, False),  # faster per step, but CPU compile is opt-in: it needs gcc and each worker compiles
    ("gpu", 10_000, torch.cuda.is_available()),
    ("gpu", 30, torch.cuda.is_available()),  # CUDA compiles whatever the run length (issue 14)
])
def test_compile_default_only_on_cuda(accelerator, steps, expected):
    cfg = compose_config(["experiment=smoke", f"trainer.accelerator={accelerator}"])
    assert parallel.from_config(cfg.trainer, steps=steps).compile is expected
    forced = compose_config(["experiment=smoke", "trainer.compile=true"])
    assert parallel.from_config(forced.trainer, steps=50).compile


def test_sharded_checkpoint_needs_fsdp_to_resume(tmp_path):
    from lab.config import ConfigError
    from lab.run import _resume_target

    (tmp_path / "last.ckpt").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r"}))
    fsdp, ddp = (compose_config(["experiment=smoke", f"trainer.strategy={s}"]) for s in ("fsdp", "ddp"))
    with pytest.raises(ConfigError, match="not completely written"):
        _resume_target(tmp_path, fsdp)
    (tmp_path / "last.ckpt" / "meta.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="trainer.strategy='ddp'.*trainer=fsdp"):
        _resume_target(tmp_path, ddp)
    assert _resume_target(tmp_path, fsdp) == ("r", tmp_path / "last.ckpt")
