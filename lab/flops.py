"""Parameter counts, training FLOPs and model FLOPs utilisation (design §4; Kaplan et al. 2020, Table 1).

Which N (decided here, used everywhere):
- ``non_embedding_params`` is Kaplan's N: every parameter except the token embedding and the output head (tied or
  not; GPT-2, which Kaplan trained, ties them, so its "embedding" is both). Position embeddings would be excluded
  too; this GPT has none (rotary). Norm gains and biases are counted: they are tiny (≈ 2·n_layers·d) and are
  real parameters of the blocks. N ≈ 12·n_layers·d_model² for both MLP kinds.
- ``total_params`` is Chinchilla's N (Hoffmann et al. 2022 count all parameters): N plus the embedding, plus the
  head when untied (a tied matrix is counted once). It equals ``sum(p.numel() for p in GPT(cfg).parameters())``
  less the padding rows of a padded vocabulary (``model.vocab_multiple_of``), which are never used.

C follows Kaplan: C = 6·N·D with the non-embedding N (forward 2N per token, backward twice the forward), plus
optionally the attention term. Counts are computed from the config alone, so a 1B-parameter plan costs nothing.

MFU uses another, named quantity: model FLOPs per token, 6·(N + d·V) + 12·n_layers·d·T (``model_flops_per_token``,
PaLM appendix B), over the peak FLOP/s of the device for the dtype computed in (``peak_flops``, Lightning's table).
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch

from lab.model import GPTConfig


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


def model_flops_per_token(cfg: GPTConfig) -> float:
    """Model FLOPs per trained token, as MFU is reported everywhere: 6·(N + d·V) + 12·n_layers·d·T.

    PaLM (Chowdhery et al. 2022) appendix B and nanoGPT's ``estimate_mfu``: every weight matrix costs 6 FLOPs per
    token and parameter (forward 2, backward 4), the output head's d·V included, and attention's q·k and
    attention-weighted-value products 12·n_layers·d·T (not halved for the causal mask). The head counts the
    vocabulary actually multiplied (``cfg.padded_vocab``: a padded head computes its padded rows). This is the
    throughput figure (``tracking.record.Metric.MODEL_FLOPS``), never C = 6·N·D of the laws.
    """
    N = non_embedding_params(cfg)
    return 6.0 * (N + cfg.d_model * cfg.padded_vocab) + 12.0 * cfg.n_layers * cfg.d_model * cfg.seq_len


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


def peak_flops(device: Union[str, torch.device], dtype: Union[torch.dtype, str], override: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device for matmuls in ``dtype``: ``override`` (trainer.peak_flops) if given, else
    Lightning's ``get_available_flops`` (datasheet figures per chip and dtype; fp32 reads the TF32 figure when
    TF32 is on). None, with a warning, for a device Lightning does not know (every CPU): the run then records no
    MFU rather than a made-up one."""
    if override is not None:
        _positive(peak_flops=override)
        return float(override)
    from lightning.fabric.utilities.throughput import get_available_flops

    device = torch.device(device)
    found = get_available_flops(device, dtype) if device.type in ("cuda", "xla") else None
    if found is None:
        warnings.warn(f"no peak FLOP/s known for {device} in {dtype}: MFU is not recorded; set "
                      "trainer.peak_flops=<FLOP/s of one device> to record it", stacklevel=2)
        return None
    return float(found)
