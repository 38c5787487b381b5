"""The GPT against reference computations on tiny configs (CPU, float64 where exactness is asserted)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lab.flops import non_embedding_params
from lab.model import (
    GPT,
    CausalSelfAttention,
    GPTConfig,
    GPTConfigError,
    apply_rotary,
    resolve_size,
    rope_tables,
    size_ladder,
)


def tiny(**overrides) -> GPTConfig:
    settings = dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=4)
    return GPTConfig(**{**settings, **overrides})


def tokens(cfg: GPTConfig, B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- attention and rotary embeddings -------------------------------------------------------------------------

def manual_attention(attn: CausalSelfAttention, x: torch.Tensor, cos, sin, scale: float) -> torch.Tensor:
    """softmax(Q K^T · scale + causal mask) V, written out."""
    B, T, d = x.shape
    q, k, v = attn.qkv(x).split(d, dim=2)
    q, k, v = (t.view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)  # -inf above the diagonal
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale + mask, dim=-1)  # (B, H, T, T)
    y = (weights @ v).transpose(1, 2).reshape(B, T, d)
    return attn.proj(y)


@pytest.mark.parametrize("mup", [False, True])
def test_sdpa_attention_equals_manual_attention_values_and_gradients(mup):
    torch.manual_seed(0)
    cfg = tiny(mup=mup, mup_base_width=16, bias=True)
    model = GPT(cfg).double()
    attn = model.blocks[0].attn
    scale = 1.0 / cfg.head_dim if mup else 1.0 / math.sqrt(cfg.head_dim)
    assert attn.scale == pytest.approx(scale)
    x = torch.randn(2, 10, cfg.d_model, dtype=torch.float64, requires_grad=True)

    def run(fn):
        out = fn()
        grads = torch.autograd.grad(out.pow(2).sum(), [x, attn.qkv.weight, attn.proj.weight])
        return out, grads

    out, grads = run(lambda: attn(x, model.rope_cos, model.rope_sin))
    ref, ref_grads = run(lambda: manual_attention(attn, x, model.rope_cos, model.rope_sin, scale))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_rotary_is_a_rotation_and_depends_only_on_relative_position():
    head_dim, T = 16, 24
    cos, sin = (t.double() for t in rope_tables(head_dim, T, 10000.0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, T, head_dim, dtype=torch.float64, generator=g)
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-6, rtol=0)
    assert not torch.allclose(rotated[..., 1:, :], x[..., 1:, :])  # it does move vectors off position 0
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :])  # position 0 is the identity

    # The same q and k placed at every position: <R_m q, R_n k> must depend on m - n only.
    q, k = torch.randn(head_dim, dtype=torch.float64, generator=g), torch.randn(head_dim, dtype=torch.float64,
                                                                                 generator=g)
    rq = apply_rotary(q.expand(1, 1, T, head_dim), cos, sin)[0, 0]  # (T, hd)
    rk = apply_rotary(k.expand(1, 1, T, head_dim), cos, sin)[0, 0]
    scores = rq @ rk.T  # (T, T): scores[m, n]
    for offset in (0, 3, 7):
        diagonal = torch.diagonal(scores, offset=-offset)  # all m - n = offset
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5, rtol=0)
    assert not torch.isclose(torch.diagonal(scores, -3)[0], torch.diagonal(scores, -7)[0])


def test_rope_buffers_are_not_saved_in_checkpoints():
    model = GPT(tiny())
    assert "rope_cos" not in model.state_dict() and "rope_sin" not in model.state_dict()
    assert model.rope_cos.shape == (16, 4)  # (seq_len, head_dim / 2)


# ---- model structure ------------------------------------------------------------------------------------------

def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = GPT(tiny(tie_embeddings=True))
    assert tied.output_weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert tied.output_weight is tied.tok_emb.weight
    untied = GPT(tiny())
    assert untied.output_weight.data_ptr() != untied.tok_emb.weight.data_ptr()


@pytest.mark.parametrize("overrides", [{}, {"mup": True, "mup_base_width": 8}, {"tie_embeddings": True,
                                                                                 "mlp": "gelu"}])
def test_forward_equals_hidden_times_output_weight_times_scale(overrides):
    torch.manual_seed(0)
    model = GPT(tiny(**overrides))
    idx = tokens(model.cfg)
    logits = model(idx)
    assert logits.shape == (2, 12, 64) and logits.dtype == torch.float32
    expected = (model.hidden(idx) @ model.output_weight.T) * model.logit_scale
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)


def test_forward_is_causal():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = tokens(model.cfg)
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % model.cfg.vocab_size
    torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8])
    assert not torch.allclose(model(idx)[:, 8:], model(changed)[:, 8:])


@pytest.mark.parametrize("mup", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_param_groups_cover_every_parameter_once_without_decay_on_norms_biases_embeddings(mup, tie):
    model = GPT(tiny(mup=mup, tie_embeddings=tie, bias=True))
    groups = model.param_groups(lr=1e-3, weight_decay=0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "tok_emb.weight" in no_decay
    assert all(n in no_decay for n in names.values() if "norm" in n or n.endswith("bias"))
    assert "blocks.0.attn.qkv.weight" in decay and "blocks.1.mlp.down.weight" in decay
    assert ("lm_head.weight" in decay) == (not tie)
    torch.optim.AdamW(groups)  # the groups are accepted as they are


def test_mup_logit_scale_and_per_group_learning_rates():
    cfg = tiny(d_model=64, n_heads=4, mup=True, mup_base_width=16)  # m = 4
    model = GPT(cfg)
    assert cfg.width_mult == 4.0 and model.logit_scale == 0.25
    groups = {g["name"]: g for g in model.param_groups(lr=1e-2, weight_decay=0.1)}
    assert groups["hidden"]["lr"] == pytest.approx(1e-2 / 4) and groups["hidden"]["lr_scale"] == 0.25
    assert groups["head"]["lr"] == 1e-2 and groups["no_decay"]["lr"] == 1e-2
    standard = GPT(tiny(d_model=64, n_heads=4))
    assert standard.logit_scale == 1.0
    assert {g["lr"] for g in standard.param_groups(lr=1e-2, weight_decay=0.1)} == {1e-2}


@pytest.mark.parametrize("mup", [False, True])
def test_init_std_is_depth_scaled_on_output_projections_and_width_scaled_under_mup(mup):
    torch.manual_seed(0)
    cfg = GPTConfig(d_model=256, n_layers=8, n_heads=4, mup=mup, mup_base_width=64, init_std=0.02)  # m = 4
    model = GPT(cfg)
    m = 4.0 if mup else 1.0
    hidden_std = 0.02 / math.sqrt(m)
    out_std = hidden_std / math.sqrt(2 * 8)
    block = model.blocks[3]
    for w in (block.attn.proj.weight, block.mlp.down.weight):
        assert w.std().item() == pytest.approx(out_std, rel=0.05)
    for w in (block.attn.qkv.weight, block.mlp.gate.weight, block.mlp.up.weight):
        assert w.std().item() == pytest.approx(hidden_std, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(block.attn_norm.weight, torch.ones(256))


# ---- configuration and the size ladder -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"n_heads": 3}, "n_heads"), ({"mlp": "relu"}, "mlp"), ({"d_model": 0}, "d_model"),
     ({"n_layers": 2.5}, "n_layers"), ({"d_model": 36, "n_heads": 4}, "n_heads"), ({"init_std": -1.0}, "init_std")],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(GPTConfigError, match=f"model.{field}="):
        tiny(**overrides)


def test_mlp_hidden_widths():
    assert tiny(mlp="gelu").mlp_hidden == 128  # 4·32
    assert tiny(mlp="swiglu").mlp_hidden == 88  # 8/3·32 = 85.3 -> nearest multiple of 8
    assert GPTConfig(d_model=768, n_layers=1, n_heads=12).mlp_hidden == 2048


def test_size_ladder_is_monotone_and_spans_10k_to_1B_non_embedding_params():
    N = [non_embedding_params(GPTConfig(**size_ladder(s))) for s in range(1, 45)]
    assert all(a < b for a, b in zip(N, N[1:]))
    assert 5e3 < N[0] < 2e4
    assert 0.8e9 < N[-1] < 1.3e9
    for s in range(1, 45):
        shape = size_ladder(s)
        assert shape["n_layers"] == s and shape["d_model"] == 32 * s
        assert shape["d_model"] // shape["n_heads"] >= min(64, shape["d_model"])


def test_size_ladder_head_count_and_overrides():
    assert size_ladder(1) == {"d_model": 32, "n_layers": 1, "n_heads": 1}  # head_dim = d_model below 64
    assert size_ladder(8) == {"d_model": 256, "n_layers": 8, "n_heads": 4}
    assert size_ladder(7)["n_heads"] == 2  # 224 = 3·74.67 does not split into 3 heads; 2 heads of 112
    assert size_ladder(4, aspect=64) == {"d_model": 256, "n_layers": 4, "n_heads": 4}
    assert size_ladder(4, d_model=512) == {"d_model": 512, "n_layers": 4, "n_heads": 8}
    assert resolve_size(4, n_layers=2) == {"d_model": 128, "n_layers": 2, "n_heads": 2}
    assert resolve_size(None, 48, 3, 6) == {"d_model": 48, "n_layers": 3, "n_heads": 6}
    with pytest.raises(GPTConfigError, match="model.size"):
        resolve_size(None, d_model=48, n_layers=3)
    with pytest.raises(GPTConfigError, match="model.size=0"):
        size_ladder(0)


def test_input_longer_than_context_is_rejected():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


# ---- it learns -------------------------------------------------------------------------------------------------

def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny(d_model=32, n_layers=2, n_heads=2, seq_len=16))
    idx = tokens(model.cfg, B=4, T=17, seed=1)
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, weight_decay=0.0))
    first = None
    for _ in range(100):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 3.5  # ~log(64) at init
    assert loss.item() < 0.5


def test_meta_device_model_is_complete_after_to_empty_and_init_weights():
    torch.manual_seed(0)
    reference = GPT(tiny())
    with torch.device("meta"):
        model = GPT(tiny())
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.rope_cos, reference.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(model.rope_sin, reference.rope_sin, atol=0, rtol=0)
    model.load_state_dict(reference.state_dict())
    idx = tokens(model.cfg)
    torch.testing.assert_close(model(idx), reference(idx))
