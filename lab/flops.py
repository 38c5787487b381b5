"""Parameter counts, training FLOPs and model FLOPs utilisation (design §4; Kaplan et al. 2020, Table 1).

Which N (decided here, used everywhere):
- ``non_embedding_params`` is Kaplan's N: every parameter except the token embedding and the output head (tied or
  not; GPT-2, which Kaplan trained, ties them, so its "embedding" is both). Position embeddings would be excluded
  too; this GPT has none (rotary). Norm gains and biases are counted: they are tiny (≈ 2·n_layers·d) and are
  real parameters of the blocks. N ≈ 12·n_layers·d_model² for both MLP kinds.
- ``total_params`` is Chinchilla's N (Hoffmann et al. 2022 count all parameters): N plus the embedding, plus the
  head when untied (a tied matrix is counted once). It equals ``sum(p.numel() for p in GPT(cfg).parameters())``.

C follows Kaplan: C = 6·N·D with the non-embedding N (forward 2N per token, backward twice the forward), plus
optionally the attention term. Counts are computed from the config alone, so a 1B-parameter plan costs nothing.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Optional

from lab.model import GPTConfig

# Peak dense tensor-core throughput per device in FLOP/s (bf16, no sparsity), from the vendors' datasheets:
# H100 SXM 989.4 TFLOPS (NVIDIA H100 datasheet, 1,979 "with sparsity" / 2); H200 has the H100's compute;
# A100 312 TFLOPS (NVIDIA A100 datasheet). "cpu" is a placeholder of the right order for a few cores: CPUs differ
# by 100x, so set the real number for your machine (trainer.peak_flops=<FLOP/s>) before reading MFU from it.
PEAK_FLOPS: Mapping[str, float] = MappingProxyType({
    "h100": 989e12,
    "h100-sxm": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "cpu": 1e12,
})


class FlopsError(ValueError):
    """A non-positive or inconsistent budget argument; the message names it and the fix."""


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:  # also rejects NaN
            raise FlopsError(f"{name}={value!r}: must be a positive number")


def _mlp_params(cfg: GPTConfig) -> int:
    d, h = cfg.d_model, cfg.mlp_hidden
    n_matrices = 3 if cfg.mlp == "swiglu" else 2  # gate, up, down  |  up, down
    biases = (n_matrices - 1) * h + d if cfg.bias else 0
    return n_matrices * d * h + biases


def non_embedding_params(cfg: GPTConfig) -> int:
    """Kaplan's N: per block 4·d² attention (q, k, v, out) + the MLP (2·d·4d gelu, 3·d·h swiglu) + 2 norms of d
    (+ biases: 4·d attention, h or 2h + d MLP, when cfg.bias), and the final norm of d."""
    d = cfg.d_model
    attention = 4 * d * d + (4 * d if cfg.bias else 0)
    per_block = attention + _mlp_params(cfg) + 2 * d
    return cfg.n_layers * per_block + d


def embedding_params(cfg: GPTConfig) -> int:
    """Token embedding V·d, plus the untied output head V·d."""
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def total_params(cfg: GPTConfig) -> int:
    """Chinchilla's N: every parameter, a tied embedding/head matrix counted once."""
    return non_embedding_params(cfg) + embedding_params(cfg)


def flops_per_token(cfg: GPTConfig, attention: bool = True, head: bool = False) -> float:
    """Training FLOPs per token: 6·N (+ 6·n_layers·seq_len·d_model when ``attention``).

    Kaplan et al. 2020 Table 1: forward ≈ 2N + 2·n_layer·n_ctx·d_attn, training = 3 × forward. The attention
    term is the q·k and attention-weighted-value products (2·T·d each per token and layer) halved by the causal
    mask. ``head`` adds the output head's 6·d·V, which 6N leaves out but which is large for small models.
    """
    per_token = 6.0 * non_embedding_params(cfg)
    if attention:
        per_token += 6.0 * cfg.n_layers * cfg.seq_len * cfg.d_model
    if head:
        per_token += 6.0 * cfg.d_model * cfg.vocab_size
    return per_token


def training_flops(N: float, D: float) -> float:
    """C = 6·N·D FLOPs (Kaplan et al. 2020, §2.1: C ≈ 6N per training token, attention term neglected)."""
    _positive(N=N, D=D)
    return 6.0 * N * D


def tokens_for_budget(C: float, N: Optional[float] = None, flops_per_token: Optional[float] = None) -> float:
    """D = C / (6·N), or D = C / flops_per_token when the per-token cost is given instead (e.g. with attention)."""
    if (N is None) == (flops_per_token is None):
        raise FlopsError(f"tokens_for_budget: got N={N!r}, flops_per_token={flops_per_token!r}; give exactly one")
    per_token = 6.0 * N if N is not None else flops_per_token
    _positive(C=C, flops_per_token=per_token)
    return C / per_token


def params_for_budget(C: float, D: float) -> float:
    """N = C / (6·D): the model size that spends budget C on D tokens."""
    _positive(C=C, D=D)
    return C / (6.0 * D)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation = achieved FLOP/s (tokens_per_s · flops_per_token) / peak FLOP/s of the devices
    (Chowdhery et al. 2022, PaLM, appendix B). Pass the peak summed over all devices of the run."""
    _positive(flops_per_token=flops_per_token, peak_flops=peak_flops)
    if not tokens_per_s >= 0:
        raise FlopsError(f"tokens_per_s={tokens_per_s!r}: must be >= 0")
    return tokens_per_s * flops_per_token / peak_flops


def peak_flops_for(device: str, override: Optional[float] = None) -> float:
    """Peak FLOP/s of one device: ``override`` if given, else the PEAK_FLOPS entry whose key appears in the
    device name (case-insensitive, e.g. "NVIDIA H100 80GB HBM3" -> h100; "cpu")."""
    if override is not None:
        _positive(peak_flops=override)
        return float(override)
    name = device.lower().replace(" ", "-")
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # longest first: "h100-sxm" before "h100"
        if key in name:
            return PEAK_FLOPS[key]
    raise FlopsError(f"no peak FLOP/s known for device {device!r} (known: {', '.join(PEAK_FLOPS)}); "
                     "set trainer.peak_flops=<FLOP/s of one device>")
