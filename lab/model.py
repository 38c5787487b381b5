"""A decoder-only GPT as a plain ``nn.Module`` (nanoGPT-clear), with an optional muP parametrisation.

Shapes in comments use B (batch, sequences), T (time, tokens), d (d_model), H (heads), hd (head_dim), V (vocab).
Pre-norm blocks: x + attn(RMSNorm(x)), x + mlp(RMSNorm(x)); rotary position embeddings (Su et al. 2021), so no
position parameters exist; attention through ``F.scaled_dot_product_attention``.

muP (Yang et al. 2022, "Tensor Programs V", Table 3, Adam column) with width multiplier m = d_model / mup_base_width:
hidden matrices are initialised with std / sqrt(m) and trained with lr / m; the attention logits are scaled by
1/hd instead of 1/sqrt(hd); the output logits are multiplied by 1/m (``logit_scale``). Embeddings, norms and the
output head keep the base lr. At m = 1 only the attention scale differs from the standard parametrisation.

The loss is not computed here: ``hidden``, ``output_weight`` and ``logit_scale`` let ``lab.losses.cross_entropy``
compute it in chunks without materialising the (B, T, V) logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

MLP_KINDS = ("swiglu", "gelu")
SWIGLU_MULTIPLE_OF = 8  # default rounding of the SwiGLU hidden width (LLaMA rounds to 256; GPU presets do too)


class GPTConfigError(ValueError):
    """A model setting that cannot build a GPT; the message names the field, the value and the fix."""

    def __init__(self, field_name: str, value: Any, fix: str):
        self.field_name = field_name
        self.value = value
        super().__init__(f"config error: model.{field_name}={value!r}: {fix}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GPTConfigError(name, value, "use a positive integer")


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int = 256
    """Tokens in the vocabulary; 256 for byte-level text."""
    seq_len: int = 256
    """Context length T in tokens (the rotary tables are built for this many positions)."""
    d_model: int
    """Residual-stream width d."""
    n_layers: int
    """Transformer blocks."""
    n_heads: int
    """Attention heads; head_dim = d_model / n_heads must be an even integer (rotary pairs)."""
    mlp: str = "swiglu"
    """'swiglu' (3 matrices, Shazeer 2020) or 'gelu' (2 matrices, GPT-2)."""
    mlp_ratio: Optional[float] = None
    """MLP hidden width / d_model; None: 4 for gelu, 8/3 for swiglu (same parameter count, 8·d² per layer)."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head (one (V, d) matrix)."""
    rope_theta: float = 10000.0
    """Rotary base: frequency i is rope_theta^(-2i/hd)."""
    init_std: float = 0.02
    """Std of the normal init of embeddings and matrices at the base width (GPT-2)."""
    mup: bool = False
    """Use muP (Yang et al. 2022) so a learning rate tuned at mup_base_width transfers across width."""
    mup_base_width: int = 64
    """d_model at which muP equals the standard parametrisation (width multiplier m = 1)."""
    bias: bool = False
    """Biases in the linear layers of the blocks (never in the output head)."""
    multiple_of: int = SWIGLU_MULTIPLE_OF
    """SwiGLU hidden width is rounded to a multiple of this (tensor-core friendly shapes; GPU presets 256)."""
    vocab_multiple_of: int = 1
    """Embedding and head rows are padded to a multiple of this (GPU presets 128, as nanoGPT's 50,304). Padded
    rows are never predicted (the loss masks their logits) nor looked up, and N is counted as before: the
    non-embedding N has no vocabulary term, and the embedding counts ``vocab_size`` rows, not the padding."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "mup_base_width", "multiple_of",
                     "vocab_multiple_of"):
            _positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads != 0:
            raise GPTConfigError(
                "n_heads", self.n_heads,
                f"d_model={self.d_model} must be divisible by n_heads; pick a divisor of {self.d_model}",
            )
        if self.head_dim % 2 != 0:
            raise GPTConfigError(
                "n_heads", self.n_heads,
                f"head_dim = d_model / n_heads = {self.head_dim} must be even for rotary embeddings; "
                "change n_heads or d_model",
            )
        if self.mlp not in MLP_KINDS:
            raise GPTConfigError("mlp", self.mlp, f"use one of {', '.join(MLP_KINDS)}")
        if self.mlp_ratio is not None and not self.mlp_ratio > 0:
            raise GPTConfigError("mlp_ratio", self.mlp_ratio, "use a positive ratio, or null for the default")
        for name in ("init_std", "rope_theta"):
            if not getattr(self, name) > 0:
                raise GPTConfigError(name, getattr(self, name), "use a positive number")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and head: vocab_size rounded up to a multiple of vocab_multiple_of."""
        return -(-self.vocab_size // self.vocab_multiple_of) * self.vocab_multiple_of

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width: ratio·d (gelu), or round(ratio·d) to a multiple of ``multiple_of`` (swiglu, LLaMA)."""
        if self.mlp == "gelu":
            return max(1, round((self.mlp_ratio or 4.0) * self.d_model))
        raw = (self.mlp_ratio or 8.0 / 3.0) * self.d_model
        return self.multiple_of * max(1, round(raw / self.multiple_of))

    @property
    def width_mult(self) -> float:
        """muP width multiplier m = d_model / mup_base_width (1.0 without muP)."""
        return self.d_model / self.mup_base_width if self.mup else 1.0


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles pos·theta^(-2i/hd), each (seq_len, hd/2), float32."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+hd/2}) of x (B, H, T, hd) by the angle of its position (GPT-NeoX layout)."""
    T = x.size(-2)
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # (T, hd/2)
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        # muP: 1/hd keeps the q·k logits O(1) as hd grows with width (q, k become correlated in training)
        self.scale = 1.0 / cfg.head_dim if cfg.mup else 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # (B, T, d) each
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, d)  # (B, T, d)
        return self.proj(y)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        h = cfg.mlp_hidden
        self.gate = nn.Linear(cfg.d_model, h, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, h, bias=cfg.bias)
        self.down = nn.Linear(h, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (B, T, h) inside, (B, T, d) out


class GeluMLP(nn.Module):
    """down(gelu(up(x))) (GPT-2)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, T, d)
        return x + self.mlp(self.mlp_norm(x))


# Parameter names ending so are the residual-branch output projections, whose init is depth-scaled.
_OUTPUT_PROJECTIONS = ("attn.proj.weight", "mlp.down.weight")


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        # Tied: no separate head module, so every parameter is listed once and counted once.
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        # Non-persistent: derived from the config, so checkpoints neither carry nor depend on them.
        self.register_buffer("rope_cos", cos, persistent=False)  # (T, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) embeddings and head; hidden matrices init_std/sqrt(m) (muP, m = width_mult);
        residual output projections further / sqrt(2·n_layers) (GPT-2: two residual additions per block).
        Norm weights 1, biases 0. Also refills the rotary tables, so a model built on the meta device and
        materialised with ``to_empty`` is complete after this call."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        std, m = self.cfg.init_std, self.cfg.width_mult
        for name, p in self.named_parameters():
            if p.ndim < 2 and "norm" in name:
                nn.init.ones_(p)
            elif p.ndim < 2:
                nn.init.zeros_(p)
            elif name in ("tok_emb.weight", "lm_head.weight"):
                nn.init.normal_(p, std=std)
            elif name.endswith(_OUTPUT_PROJECTIONS):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers * m))
            else:
                nn.init.normal_(p, std=std / math.sqrt(m))

    @property
    def output_weight(self) -> torch.Tensor:
        """The (V_padded, d) matrix that maps the final hidden state to logits (the embedding when tied); rows
        from ``cfg.vocab_size`` on are padding, which the loss masks (``vocab_size=cfg.vocab_size``)."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    @property
    def logit_scale(self) -> float:
        """Output multiplier on the logits: 1/m under muP (Yang et al. 2022), 1.0 otherwise."""
        return 1.0 / self.cfg.width_mult

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, d) after the last norm, for token ids idx (B, T)."""
        if idx.ndim != 2 or idx.dtype not in (torch.long, torch.int):
            raise ValueError(f"GPT input: expected integer token ids of shape (B, T), got {idx.dtype} "
                             f"{tuple(idx.shape)}; pass a LongTensor (B, T)")
        if idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"GPT input: sequence of {idx.size(1)} tokens exceeds model.seq_len="
                             f"{self.cfg.seq_len}; crop the input or raise model.seq_len")
        x = self.tok_emb(idx)  # (B, T, d)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) = (hidden(idx) @ output_weight.T) · logit_scale, the padded rows left out."""
        logits = F.linear(self.hidden(idx), self.output_weight)[..., : self.cfg.vocab_size]  # (B, T, V)
        return logits * self.logit_scale if self.cfg.mup else logits

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim.AdamW``, each with its ``lr`` and ``weight_decay``.

        - ``hidden``: block matrices; decayed; lr/m under muP (Adam rule for matrices whose fan-in and fan-out
          both grow with width, Yang et al. 2022 Table 3), lr otherwise.
        - ``head``: the untied output head (V, d); decayed; base lr (only its fan-in grows; muP scales its
          output by 1/m instead).
        - ``no_decay``: norms, biases and the token embedding (also the tied head); base lr, weight_decay 0.

        Each group also carries ``name`` and ``lr_scale`` (its lr / the base lr), so a schedule that sets lr by
        hand can keep the ratio: ``group["lr"] = lr_t * group["lr_scale"]``. Empty groups are left out.
        """
        hidden_scale = 1.0 / self.cfg.width_mult
        groups: dict[str, list[nn.Parameter]] = {"hidden": [], "head": [], "no_decay": []}
        for name, p in self.named_parameters():
            if p.ndim < 2 or name == "tok_emb.weight":
                groups["no_decay"].append(p)
            elif name == "lm_head.weight":
                groups["head"].append(p)
            else:
                groups["hidden"].append(p)
        settings = {"hidden": (hidden_scale, weight_decay), "head": (1.0, weight_decay), "no_decay": (1.0, 0.0)}
        return [
            {"name": key, "params": params, "lr": lr * settings[key][0], "lr_scale": settings[key][0],
             "weight_decay": settings[key][1]}
            for key, params in groups.items() if params
        ]


def _ladder_heads(d_model: int, head_dim: int) -> int:
    """The most heads not above d_model // head_dim that split d_model into even, equal head widths."""
    for n_heads in range(max(1, d_model // head_dim), 0, -1):
        if d_model % n_heads == 0 and (d_model // n_heads) % 2 == 0:
            return n_heads
    return 1


def size_ladder(
    size: int,
    aspect: int = 32,
    head_dim: int = 64,
    *,
    d_model: Optional[int] = None,
    n_layers: Optional[int] = None,
    n_heads: Optional[int] = None,
) -> dict[str, int]:
    """One dial for width and depth at a fixed aspect ratio d_model / n_layers = ``aspect``.

    n_layers = size, d_model = aspect·size, n_heads = d_model // head_dim (at least 1; when d_model < head_dim
    one head spans d_model; when head_dim does not divide d_model, the largest head count below that which
    divides d_model into even head widths). Non-embedding N ≈ 12·n_layers·d_model² = 12·aspect²·size³: with
    aspect 32, size 1 is ~12k and size 44 ~1.05e9 parameters. Explicit d_model / n_layers / n_heads win
    (n_heads is re-derived from an overridden d_model unless given).
    """
    _positive_int("size", size)
    _positive_int("aspect", aspect)
    _positive_int("head_dim", head_dim)
    d = d_model if d_model is not None else aspect * size
    return {
        "d_model": d,
        "n_layers": n_layers if n_layers is not None else size,
        "n_heads": n_heads if n_heads is not None else _ladder_heads(d, head_dim),
    }


def resolve_size(
    size: Optional[int],
    d_model: Optional[int] = None,
    n_layers: Optional[int] = None,
    n_heads: Optional[int] = None,
    aspect: int = 32,
    head_dim: int = 64,
) -> dict[str, int]:
    """d_model, n_layers, n_heads from the ladder dial ``size`` with explicit values overriding it, or from the
    three explicit values alone when size is None."""
    if size is None:
        if d_model is None or n_layers is None or n_heads is None:
            raise GPTConfigError(
                "size", size,
                "set model.size=<ladder dial, e.g. 2> or all of model.d_model, model.n_layers, model.n_heads "
                f"(got d_model={d_model}, n_layers={n_layers}, n_heads={n_heads})",
            )
        return {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}
    return size_ladder(size, aspect, head_dim, d_model=d_model, n_layers=n_layers, n_heads=n_heads)


def gpt_config(model: Any, **shape: int) -> GPTConfig:
    """The GPTConfig of a training config's ``model`` section (lab.config.ModelConfig), sized by its own dial or
    explicit shape unless ``shape`` (d_model, n_layers, n_heads) is given. Lives here, not in lab.run, so that
    sweep designs can count parameters without importing Lightning."""
    shape = shape or resolve_size(model.size, model.d_model, model.n_layers, model.n_heads)
    return GPTConfig(vocab_size=model.vocab_size, seq_len=model.seq_len, mlp=model.mlp,
                     tie_embeddings=model.tie_embeddings, mup=model.mup, mup_base_width=model.mup_base_width,
                     init_std=model.init_std, multiple_of=model.multiple_of,
                     vocab_multiple_of=model.vocab_multiple_of, **shape)
