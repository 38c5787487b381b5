"""HSDP (trainer.hsdp): FSDP2 on a 2-D (replicate, shard) mesh; checked on a one-rank gloo group on the CPU."""

from __future__ import annotations

import pytest
import torch

from lab import parallel
from lab.train import compose_config


def test_hsdp_shards_on_a_2d_mesh_and_matches_the_whole_model(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lab.model import GPT, GPTConfig

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        whole = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=2, n_heads=2))
        hybrid = GPT(whole.cfg)
        hybrid.load_state_dict(whole.state_dict())
        p = parallel.Parallelism(strategy="fsdp", hsdp_replicas=1)
        parallel.apply(hybrid, p, device_mesh=init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",)))
        weight = hybrid.blocks[0].attn.qkv.weight
        assert weight.device_mesh.mesh_dim_names == ("replicate", "shard")
        x = torch.randint(0, 32, (2, 8))
        for m in (whole, hybrid):
            torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
        assert float(parallel.grad_sq_norm(hybrid.parameters())) == pytest.approx(
            float(parallel.grad_sq_norm(whole.parameters())), rel=1e-5)
    finally:
        dist.destroy_process_group()


def test_hsdp_needs_fsdp_and_replicates_across_nodes():
    cfg = compose_config(["trainer=fsdp", "trainer.num_nodes=2", "trainer.hsdp=true", "batch.sequences=64"])
    assert parallel.from_config(cfg.trainer, steps=10).hsdp_replicas == 2
    with pytest.raises(parallel.ParallelError, match="trainer.hsdp"):
        parallel.from_config(compose_config(["trainer=ddp", "trainer.hsdp=true"]).trainer, steps=10)


def test_fsdp_bf16_policy_agrees_with_autocast_on_the_whole_model(tmp_path):
    """The one precision recipe: FSDP2 (blocks gathered in bf16, root fp32) under autocast computes what autocast
    computes on the unsharded fp32 model, up to RMSNorm gains read in bf16."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lab.losses import cross_entropy
    from lab.model import GPT, GPTConfig

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        whole = GPT(GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2))
        sharded = GPT(whole.cfg)
        sharded.load_state_dict(whole.state_dict())
        parallel.shard(sharded, init_device_mesh("cpu", (1,)), parallel.POLICIES["bf16-mixed"])
        x = torch.randint(0, 64, (4, 16))
        out = []
        for m in (whole, sharded):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = cross_entropy(m.hidden(x), m.output_weight, torch.roll(x, -1, 1), chunk_size=16)
            loss.backward()
            out.append((float(loss), float(parallel.grad_sq_norm(m.parameters()))))
        assert sharded.blocks[0].attn.qkv.weight.dtype == torch.float32, "fp32 master weights stay sharded"
        assert out[1][0] == pytest.approx(out[0][0], rel=1e-3)
        assert out[1][1] == pytest.approx(out[0][1], rel=2e-2)
    finally:
        dist.destroy_process_group()
