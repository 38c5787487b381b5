"""HSDP (trainer.hsdp): FSDP2 on a 2-D (replicate, shard) mesh; checked on a one-rank gloo group on the CPU."""

from __future__ import annotations

import pytest
import torch

from lab import parallel
from lab.train import compose_config


def test_hsdp_shards_on_a_2d_mesh_and_matches_the_whole_model(one_rank_group, twin_gpts):
    from torch.distributed.device_mesh import init_device_mesh

    whole, hybrid = twin_gpts(vocab_size=32, seq_len=8, d_model=16)
    p = parallel.Parallelism(strategy="fsdp", hsdp_replicas=1)
    parallel.apply(hybrid, p, device_mesh=init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",)))
    weight = hybrid.blocks[0].attn.qkv.weight
    assert weight.device_mesh.mesh_dim_names == ("replicate", "shard")
    x = torch.randint(0, 32, (2, 8))
    for m in (whole, hybrid):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    assert float(parallel.grad_sq_norm(hybrid.parameters())) == pytest.approx(
        float(parallel.grad_sq_norm(whole.parameters())), rel=1e-5)


def test_hsdp_needs_fsdp_and_replicates_across_nodes():
    cfg = compose_config(["trainer=fsdp", "trainer.num_nodes=2", "trainer.hsdp=true", "batch.sequences=64"])
    assert parallel.from_config(cfg.trainer, steps=10).hsdp_replicas == 2
    with pytest.raises(parallel.ParallelError, match="trainer.hsdp"):
        parallel.from_config(compose_config(["trainer=ddp", "trainer.hsdp=true"]).trainer, steps=10)


def test_fsdp_bf16_policy_agrees_with_autocast_on_the_whole_model(one_rank_group, twin_gpts):
    """The one precision recipe: FSDP2 (blocks gathered in bf16, root fp32) under autocast computes what autocast
    computes on the unsharded fp32 model, up to RMSNorm gains read in bf16."""
    from torch.distributed.device_mesh import init_device_mesh

    from lab.losses import cross_entropy

    whole, sharded = twin_gpts(vocab_size=64, seq_len=16, d_model=32)
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
