"""Fixtures of the sharding tests: a one-rank process group on the CPU and a model with a twin to shard."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-rank gloo process group (FSDP2 and device meshes need one), destroyed after the test."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def twin_gpts():
    """A factory: (whole, twin) two-layer, two-head GPTs of the given shape, seeded, the twin a copy of the whole
    model's weights for a parallel wrapper to shard."""
    from lab.model import GPT, GPTConfig

    def make(vocab_size: int, seq_len: int, d_model: int) -> tuple[GPT, GPT]:
        torch.manual_seed(0)
        whole = GPT(GPTConfig(vocab_size=vocab_size, seq_len=seq_len, d_model=d_model, n_layers=2, n_heads=2))
        twin = GPT(whole.cfg)
        twin.load_state_dict(whole.state_dict())
        return whole, twin

    return make
