"""Parameter counts against real models; FLOP budgets by known values and inverse checks."""

import pytest
import torch

from lab.flops import (
    FlopsError,
    embedding_params,
    flops_per_token,
    mfu,
    model_flops_per_token,
    non_embedding_params,
    params_for_budget,
    peak_flops,
    tokens_for_budget,
    total_params,
    training_flops,
)
from lab.model import GPT, GPTConfig


@pytest.mark.parametrize(
    "overrides",
    [
        {"mlp": "swiglu"},
        {"mlp": "gelu"},
        {"mlp": "swiglu", "tie_embeddings": True},
        {"mlp": "gelu", "tie_embeddings": True, "bias": True},
        {"mlp": "swiglu", "bias": True, "d_model": 40, "n_heads": 4},  # swiglu hidden 104 = round(106.7 / 8)·8
        {"mlp": "gelu", "mlp_ratio": 3.0, "n_layers": 1},
    ],
)
def test_analytic_counts_equal_the_parameters_of_a_real_model(overrides):
    cfg = GPTConfig(**{"vocab_size": 96, "seq_len": 8, "d_model": 48, "n_layers": 3, "n_heads": 4, **overrides})
    model = GPT(cfg)
    assert total_params(cfg) == sum(p.numel() for p in model.parameters())
    embedding = {"tok_emb.weight", "lm_head.weight"}
    assert non_embedding_params(cfg) == sum(p.numel() for n, p in model.named_parameters() if n not in embedding)
    assert embedding_params(cfg) == cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def test_non_embedding_params_is_about_12_layers_d_squared():
    for mlp in ("gelu", "swiglu"):
        cfg = GPTConfig(d_model=768, n_layers=12, n_heads=12, mlp=mlp)  # GPT-2 small shape
        assert non_embedding_params(cfg) == pytest.approx(12 * 12 * 768**2, rel=0.01)


def test_chinchilla_scale_budget():
    assert training_flops(1e12, 20e12) == pytest.approx(1.2e26, rel=1e-12)  # 1T params × 20T tokens
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23, rel=1e-12)  # Chinchilla 70B


@pytest.mark.parametrize(("N", "D"), [(1e4, 2e5), (3.3e7, 6.6e8), (7e10, 1.4e12)])
def test_inverse_checks(N, D):
    C = training_flops(N, D)
    assert tokens_for_budget(C, N) == pytest.approx(D, rel=1e-12)
    assert params_for_budget(C, D) == pytest.approx(N, rel=1e-12)
    per_token = 6 * N + 1234.0
    assert tokens_for_budget(per_token * D, flops_per_token=per_token) == pytest.approx(D, rel=1e-12)


def test_flops_per_token_attention_term_by_hand():
    # d=64, L=2, T=128, gelu: N = 2·(4·64² + 2·64·256 + 2·64) + 64 = 2·(16384 + 32768 + 128) + 64 = 98624
    cfg = GPTConfig(vocab_size=256, seq_len=128, d_model=64, n_layers=2, n_heads=2, mlp="gelu")
    assert non_embedding_params(cfg) == 98624
    assert flops_per_token(cfg, attention=False) == 6 * 98624
    # attention: 6 · n_layers · seq_len · d_model = 6 · 2 · 128 · 64 = 98304
    assert flops_per_token(cfg) == 6 * 98624 + 98304
    # output head: 6 · d · V = 6 · 64 · 256 = 98304
    assert flops_per_token(cfg, head=True) == 6 * 98624 + 98304 + 98304


def test_model_flops_of_gpt2_124m_are_6N_plus_attention():
    # GPT-2 small as nanoGPT's estimate_mfu counts it: N = all parameters with the (tied) head, 12·L·d·T attention.
    cfg = GPTConfig(vocab_size=50_304, seq_len=1024, d_model=768, n_layers=12, n_heads=12, mlp="gelu", bias=True,
                    tie_embeddings=True)
    N_with_head = non_embedding_params(cfg) + 768 * 50_304
    expected = 6 * N_with_head + 12 * 12 * 768 * 1024
    assert model_flops_per_token(cfg) == pytest.approx(expected, rel=1e-3)
    # ~124M parameters (nanoGPT: 124M with position embeddings; rotary here has none) and ~0.87 GFLOP per token
    assert 1.20e8 < N_with_head < 1.25e8
    assert model_flops_per_token(cfg) == pytest.approx(6 * 1.24e8 + 12 * 12 * 768 * 1024, rel=0.02)
    # The throughput figure is not C: the laws keep 6·N (non-embedding), which leaves out head and attention.
    assert model_flops_per_token(cfg) > 6 * non_embedding_params(cfg) * 1.5


def test_mfu_and_peak_flops():
    # 2e4 tokens/s of a 1e9-parameter model (6e9 FLOPs/token) = 1.2e14 FLOP/s on one A100 (3.12e14 FLOP/s)
    assert mfu(2e4, 6e9, 312e12) == pytest.approx(1.2e14 / 312e12)
    assert mfu(0.0, 6e9, 1e12) == 0.0
    assert peak_flops("cpu", torch.float32, override=2.5e11) == 2.5e11
    with pytest.warns(UserWarning, match="trainer.peak_flops"):
        assert peak_flops("cpu", torch.bfloat16) is None, "an unknown device has no MFU, and says how to get one"
    with pytest.raises(FlopsError, match="peak_flops"):
        peak_flops("cpu", torch.float32, override=0.0)


def test_bad_budget_arguments_are_named():
    with pytest.raises(FlopsError, match="N=0"):
        training_flops(0, 1e9)
    with pytest.raises(FlopsError, match="exactly one"):
        tokens_for_budget(1e18)
    with pytest.raises(FlopsError, match="exactly one"):
        tokens_for_budget(1e18, N=1e6, flops_per_token=6e6)
    with pytest.raises(FlopsError, match="peak_flops"):
        mfu(1e3, 1e6, 0.0)
