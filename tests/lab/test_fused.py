"""Opt-in fast paths against their references, values and gradients: compiled blocks vs eager, activation
checkpointing vs plain blocks (through LitGPT, as training calls them), and the fused (chunked) linear +
cross-entropy through a whole lab-train run."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lab import parallel
from lab.config import OptimConfig
from lab.model import GPT, GPTConfig
from lab.module import Accounting, LitGPT
from lab.run import train
from lab.train import compose_config

REPO = Path(__file__).resolve().parents[2]
# A warm cache makes the compile test ~2 s instead of ~20 s (environment.md).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "torchinductor"))


def lit(model: GPT, p: parallel.Parallelism, loss_chunk=None) -> LitGPT:
    acct = Accounting(seq_len=model.cfg.seq_len, model_flops_per_token=1.0, peak_flops=1.0, bytes_per_token=1.0)
    val = torch.zeros(1, model.cfg.seq_len, dtype=torch.long)
    return LitGPT(model, OptimConfig(), plan=[], accounting=acct, val_data=(val, val), val_every_steps=1,
                  max_loss=20.0, micro_batch=2, parallelism=p, loss_chunk=loss_chunk)


def loss_and_grads(module: LitGPT, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.model.zero_grad(set_to_none=True)
    loss = module._loss(x, y)
    loss.backward()
    # state_dict names: the same whatever wrappers were applied
    grads = {name: p.grad for name, p in module.model.named_parameters()}
    return loss.detach(), {n.replace("_checkpoint_wrapped_module.", ""): g for n, g in grads.items()}


@pytest.fixture
def tiny() -> tuple[GPT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (2, 16), generator=g)
    return GPT(cfg), x, torch.roll(x, -1, dims=1)


def assert_same(ref, out, atol: float) -> None:
    torch.testing.assert_close(out[0], ref[0], atol=atol, rtol=0)
    assert ref[1].keys() == out[1].keys()
    for name, g in ref[1].items():
        torch.testing.assert_close(out[1][name], g, atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_blocks_match_eager_values_and_gradients(tiny):
    model, x, y = tiny
    eager = lit(copy.deepcopy(model), parallel.Parallelism())
    compiled = lit(model, parallel.Parallelism(compile=True))
    compiled.configure_model()
    assert all(b._compiled_call_impl is not None for b in compiled.model.blocks), "blocks compiled in place"
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    ref = loss_and_grads(eager, x, y)
    for _ in range(2):  # the second call runs the cached graph
        assert_same(ref, loss_and_grads(compiled, x, y), atol=2e-5)


def test_activation_checkpointing_matches_plain_blocks(tiny):
    model, x, y = tiny
    plain = lit(copy.deepcopy(model), parallel.Parallelism())
    ckpt = lit(model, parallel.Parallelism(activation_checkpointing=True))
    ckpt.configure_model()
    ckpt.configure_model()  # idempotent: Lightning may call it again
    assert type(ckpt.model.blocks[0]).__name__ == "CheckpointWrapper"
    assert ckpt.model.state_dict().keys() == plain.model.state_dict().keys(), "checkpoints do not change"
    assert_same(loss_and_grads(plain, x, y), loss_and_grads(ckpt, x, y), atol=1e-6)


def test_fused_loss_in_the_module_matches_naive(tiny):
    model, x, y = tiny
    naive = lit(copy.deepcopy(model), parallel.Parallelism())
    fused = lit(model, parallel.Parallelism(), loss_chunk=5)  # 32 rows: ragged last chunk
    assert_same(loss_and_grads(naive, x, y), loss_and_grads(fused, x, y), atol=1e-6)


def test_fused_loss_run_reproduces_naive_run(tmp_path):
    def run(name: str, *extra: str) -> list[float]:
        cfg = compose_config(["experiment=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                              f"checkpoint_dir={tmp_path}/ckpt", f"data.cache_dir={tmp_path}/cache",
                              "trainer.progress_bar=false", "trainer.threads=1", f"tracking.run_name={name}", *extra])
        result = train(cfg)
        assert result.status == "FINISHED"
        history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(result.run_id, "train/loss")
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    naive = run("naive")
    fused = run("fused", "trainer.fused_ce_chunk=48")  # 4 x 32 = 128 rows per micro-batch: ragged last chunk
    assert len(fused) == len(naive) == 50
    assert max(abs(a - b) for a, b in zip(fused, naive)) < 1e-4
    assert fused[-1] < fused[0] - 1.0, "and it trains"


def test_bad_fast_path_settings_are_named():
    with pytest.raises(ValueError, match="trainer.fused_ce_chunk=0"):
        compose_config(["experiment=smoke", "trainer.fused_ce_chunk=0"])
    with pytest.raises(ValueError, match="trainer.compile_mode='fastest'"):
        compose_config(["experiment=smoke", "trainer.compile_mode=fastest"])
    with pytest.raises(ValueError, match="trainer.strategy='fsdp1'.*auto, ddp, fsdp"):
        compose_config(["experiment=smoke", "trainer.strategy=fsdp1"])
