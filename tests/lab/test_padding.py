"""Vocabulary padding (model.vocab_multiple_of) and the SwiGLU width multiple (model.multiple_of): padded logits are
never predicted, N is counted as before, and training matches the unpadded model."""

from __future__ import annotations

import pytest
import torch

from lab.flops import embedding_params, non_embedding_params, total_params
from lab.losses import cross_entropy
from lab.model import GPT, GPTConfig

BASE = dict(vocab_size=50, seq_len=8, d_model=32, n_layers=2, n_heads=2)


def test_padded_rows_and_counts():
    cfg = GPTConfig(**BASE, vocab_multiple_of=128)
    model = GPT(cfg)
    assert cfg.padded_vocab == 128 and model.output_weight.shape == (128, 32)
    plain = GPTConfig(**BASE)
    # N and the embedding count the real vocabulary, as before: padding rows are never used.
    assert non_embedding_params(cfg) == non_embedding_params(plain)
    assert embedding_params(cfg) == embedding_params(plain) and total_params(cfg) == total_params(plain)
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 50), "logits of the real vocabulary only"


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_padding_is_never_predicted_and_the_loss_equals_the_unpadded_one(chunk_size):
    torch.manual_seed(0)
    padded = GPT(GPTConfig(**BASE, vocab_multiple_of=64))
    plain = GPT(GPTConfig(**BASE))
    state = padded.state_dict()
    state = {k: (v[:50] if k in ("tok_emb.weight", "lm_head.weight") else v) for k, v in state.items()}
    plain.load_state_dict(state)
    x = torch.randint(0, 50, (2, 8))
    y = torch.roll(x, -1, dims=1)
    losses = {}
    for name, m in (("padded", padded), ("plain", plain)):
        m.zero_grad()
        loss = cross_entropy(m.hidden(x), m.output_weight, y, chunk_size=chunk_size, vocab_size=50)
        loss.backward()
        losses[name] = loss.detach()
    torch.testing.assert_close(losses["padded"], losses["plain"])
    grad = padded.lm_head.weight.grad
    assert torch.count_nonzero(grad[50:]) == 0, "padding rows get no gradient: never predicted"
    torch.testing.assert_close(grad[:50], plain.lm_head.weight.grad, atol=1e-6, rtol=1e-5)


def test_swiglu_width_multiple():
    assert GPTConfig(**BASE).mlp_hidden == 88  # round(8/3 · 32 / 8) · 8
    assert GPTConfig(**BASE, multiple_of=256).mlp_hidden == 256
    assert GPTConfig(d_model=768, n_layers=1, n_heads=12, multiple_of=256).mlp_hidden == 2048
