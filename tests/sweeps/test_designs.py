"""Sweep designs: JSON snapshots of every generator, plus the arithmetic and the errors behind them.

Snapshots live in tests/sweeps/snapshots/<name>.json. After an intended change to a design, regenerate them with
    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/sweeps/test_designs.py
and review the diff: a changed name means a re-run sweep no longer finds its earlier runs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lab.config import BatchConfig, ModelConfig
from lab.train import CONF_MODULE
from sweeps.designs import (Base, DesignError, RunSpec, chinchilla_N, isoflop, log_space, lr_batch, sci,
                            size_tokens_grid, tokens_label, with_seeds)
from sweeps.catalog import expand

SNAPSHOTS = Path(__file__).parent / "snapshots"
SMOKE_MODEL = ModelConfig(size=1, seq_len=32)
SMOKE_BATCH = BatchConfig(sequences=8, micro_batch=4)


def assert_snapshot(name: str, specs: list[RunSpec]) -> None:
    path = SNAPSHOTS / f"{name}.json"
    got = [s.to_dict() for s in specs]
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert path.exists(), f"no snapshot {path}: create it with UPDATE_SNAPSHOTS=1 pytest {__file__}"
    assert got == json.loads(path.read_text()), f"{name} changed; if intended, regenerate with UPDATE_SNAPSHOTS=1"


@pytest.fixture(scope="module")
def base() -> Base:
    return Base.from_config(SMOKE_MODEL, SMOKE_BATCH, sizes=[1, 2, 3, 4, 5])


def test_snapshot_isoflop(base):
    assert_snapshot("isoflop", isoflop(base, budgets=[1e9, 1e10, 1e11], k=3))


def test_snapshot_grid(base):
    assert_snapshot("grid", size_tokens_grid(base, tokens_per_param=[5, 20], seeds=[0, 1]))


def test_snapshot_lr_batch(base):
    small = Base(base.rungs[:2], base.seq_len, base.batch_sequences, base.micro_batch)
    assert_snapshot("lr_batch", lr_batch(small, tokens_per_param=[20], lr_min=1e-3, lr_max=1e-1, n_lr=3,
                                         batch_sequences=[4, 8, 16]))


def test_ladder_counts_match_the_model():
    from lab.flops import non_embedding_params
    from lab.model import GPTConfig, size_ladder

    b = Base.from_config(SMOKE_MODEL, SMOKE_BATCH, sizes=[2, 1, 2])
    assert [r.label for r in b.rungs] == ["size 1", "size 2"], "sorted, deduplicated"
    assert b.rungs[0].N == 12640  # the smoke model's N (tests/lab/test_train.py)
    gpt = GPTConfig(seq_len=32, **size_ladder(2))
    assert b.rungs[1].N == non_embedding_params(gpt)


def test_explicit_shapes_refine_the_ladder():
    from lab.flops import non_embedding_params
    from lab.model import GPTConfig
    from lab.train import compose_config

    shape = {"d_model": 48, "n_layers": 1, "n_heads": 1}
    b = Base.from_config(SMOKE_MODEL, SMOKE_BATCH, sizes=[2, shape, 1])
    assert [r.label for r in b.rungs] == ["size 1", "d_model=48,n_layers=1,n_heads=1", "size 2"], "ordered by N"
    assert b.rungs[1].N == non_embedding_params(GPTConfig(seq_len=32, **shape))
    spec = isoflop(b, [120 * b.rungs[1].N ** 2], k=1)[0]  # N*(C) = N of the shape
    assert spec.overrides[:4] == ("model.size=null", "model.d_model=48", "model.n_layers=1", "model.n_heads=1")
    typed = compose_config(["experiment=smoke", *spec.overrides])  # the overrides are valid training config
    assert (typed.model.size, typed.model.d_model, typed.model.n_layers) == (None, 48, 1)
    with pytest.raises(DesignError, match="exactly d_model, n_layers and n_heads"):
        Base.from_config(SMOKE_MODEL, SMOKE_BATCH, sizes=[{"d_model": 48}])


def test_isoflop_spends_the_budget_on_sizes_around_the_chinchilla_optimum(base):
    for C in (1e9, 1e10, 1e11):
        specs = isoflop(base, budgets=[C], k=3)
        sizes = [int(dict(o.split("=") for o in s.overrides)["model.size"]) for s in specs]
        nearest = min(base.rungs, key=lambda r: abs(math.log(r.N / chinchilla_N(C)))).label
        assert len(sizes) == 3 and sizes == sorted(sizes) and nearest in [f"size {s}" for s in sizes]
        assert sizes == list(range(sizes[0], sizes[0] + 3)), "a contiguous window of the ladder"
        for s, size in zip(specs, sizes):
            D = int(dict(o.split("=") for o in s.overrides)["budget.tokens"])
            N = base.rungs[size - 1].N
            assert abs(6 * N * D - C) <= 6 * N / 2, "C = 6·N·D, D to the nearest token"
            assert s.tags == {"design": "isoflop", "budget": sci(C, 6), "seed": "0"}
    # N*(1e9) = 2.9e3 is below the smallest size: the window slides to the bottom of the ladder
    assert [s.name for s in isoflop(base, [1e9], k=2)] == ["isoflop-C1e9-N1.26e4-B256-s0",
                                                           "isoflop-C1e9-N9.76e4-B256-s0"]
    # N*(C) = N of size 3 exactly: size 3 is the centre
    C3 = 120 * base.rungs[2].N ** 2
    assert [o for s in isoflop(base, [C3], k=3) for o in s.overrides if o.startswith("model.size")] == \
        ["model.size=2", "model.size=3", "model.size=4"]
    # 64x more tokens per parameter: N* 8x smaller, nearest size 2 (N2/N3 = 0.29 vs N1/N3 = 0.04 around 1/8)
    assert isoflop(base, [C3], k=1, tokens_per_param=20 * 64)[0].overrides[0] == "model.size=2"


def test_grid_and_landscape_values(base):
    grid = size_tokens_grid(base, tokens_per_param=[20])
    assert [s.overrides[1] for s in grid] == [f"budget.tokens={20 * r.N}" for r in base.rungs]
    small = Base(base.rungs[:1], base.seq_len, base.batch_sequences, base.micro_batch)
    land = lr_batch(small, [40], lr_min=1e-4, lr_max=1e-2, n_lr=3, batch_sequences=[2, 8])
    assert len(land) == 6 and len({s.tags["point"] for s in land}) == 1
    assert {o for s in land for o in s.overrides if o.startswith("optim.lr")} == {
        "optim.lr=0.0001", "optim.lr=0.001", "optim.lr=0.01"}
    assert "batch.micro_batch=2" in land[0].overrides, "a batch smaller than micro_batch is one micro-batch"
    assert land[0].name == "lrb-N1.26e4-D5.06e5-B64-lr1e-4-s0"


def test_seeds_repeat_every_run_and_keep_names_stable(base):
    one = isoflop(base, [1e10], k=2, seeds=[0])
    three = isoflop(base, [1e10], k=2, seeds=[0, 1, 2])
    assert len(three) == 3 * len(one) and set(s.name for s in one) <= set(s.name for s in three)
    assert sorted({o for s in three for o in s.overrides if o.startswith("seed=")}) == ["seed=0", "seed=1", "seed=2"]
    assert isoflop(base, [1e10], k=2, seeds=[0, 1, 2]) == three, "deterministic"
    with pytest.raises(DesignError, match="distinct"):
        with_seeds(one, [1, 1])


def test_labels():
    assert [sci(x) for x in (3e14, 1.2e6, 12640, 0.003, 1.0)] == ["3e14", "1.2e6", "1.26e4", "3e-3", "1e0"]
    assert [tokens_label(b) for b in (256, 1024, 16384, 2 * 1024 * 1024, 1500)] == ["256", "1k", "16k", "2M", "1.5e3"]
    assert log_space(1e-4, 1e-1, 4) == (1e-4, 1e-3, 1e-2, 1e-1)


@pytest.mark.parametrize("design, match", [
    ({"name": "isoflop", "sizes": [1, 2], "budgets": [1e9], "k": 3}, "k=3 but the ladder has 2 sizes"),
    ({"name": "isoflop", "sizes": [1, 8], "budgets": [1e9], "k": 2}, "less than one batch of 256 tokens"),
    ({"name": "isoflop", "sizes": [1], "budgets": [-1.0], "k": 1}, "C=-1.0 must be a positive"),
    ({"name": "isoflop", "sizes": [1], "budgets": [1e9], "k": 1, "tokens_per_param": 0}, "tokens_per_param=0 must be"),
    ({"name": "isofloop", "sizes": [1]}, "unknown design 'isofloop'"),
    ({"name": "grid", "sizes": [1], "tokens_per_param": [20], "budgets": [1]}, r"unknown parameter\(s\) \['budgets'\]"),
    ({"name": "grid", "sizes": [1]}, "missing a required argument: 'tokens_per_param'"),
    ({"name": "grid", "sizes": [], "tokens_per_param": [20]}, "no sizes"),
    ({"name": "grid", "sizes": [1], "tokens_per_param": [20, 20]}, "share the names"),
    ({"name": "lr_batch", "sizes": [1], "tokens_per_param": [20], "lr_min": 1e-3, "lr_max": 1e-2, "n_lr": 2,
      "batch_sequences": [6]}, "not a multiple of batch.micro_batch=4"),
])
def test_bad_designs_are_named(design, match):
    with pytest.raises(DesignError, match=match):
        expand(design, SMOKE_MODEL, SMOKE_BATCH)


def test_explicit_model_shape_is_refused():
    with pytest.raises(DesignError, match="model.d_model=64"):
        expand({"name": "grid", "sizes": [1], "tokens_per_param": [20]}, ModelConfig(d_model=64), SMOKE_BATCH)


@pytest.mark.parametrize("overrides, n_runs", [
    (["experiment=smoke_sweep"], 4),
    (["sweep=isoflop"], 15),
    (["sweep=grid"], 16),
    (["sweep=lr_batch"], 28),
])
def test_shipped_configs_expand(overrides, n_runs):
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=overrides, return_hydra_config=True)
    design = OmegaConf.to_container(cfg.hydra.sweeper.design)
    specs = expand(design, OmegaConf.to_object(cfg.model), OmegaConf.to_object(cfg.batch))
    assert len(specs) == n_runs and len({s.name for s in specs}) == n_runs
    if overrides == ["experiment=smoke_sweep"]:  # 2 budgets x 2 sizes
        assert {s.tags["budget"] for s in specs} == {"1e9", "3e9"}
        assert {o for s in specs for o in s.overrides if o.startswith("model.size")} == {"model.size=1",
                                                                                         "model.size=2"}
