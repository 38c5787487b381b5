"""Third-party fused linear cross-entropy kernels, selectable where installed (``pip install -e .[gpu]``).

``trainer.loss_impl``: ``lab`` (lab.losses.cross_entropy, naive or chunked: the reference), ``liger`` (Liger-Kernel's
``LigerFusedLinearCrossEntropyLoss``, Hsu et al. 2024) or ``cce`` (Apple's Cut Cross-Entropy ``linear_cross_entropy``,
Wijmans et al. 2025). Both are Triton kernels for CUDA. They take neither a logit scale nor a padded head, so the
wrapper folds muP's output multiplier into the hidden states (scale·h·Wᵀ = (scale·h)·Wᵀ) and passes only the real
vocabulary's rows (a contiguous view). tests/lab/test_fused_losses.py checks each against the reference where it is
installed and a GPU is present.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from lab.losses import IGNORE_INDEX, cross_entropy

LOSS_IMPLS = ("lab", "liger", "cce")

LossFn = Callable[..., torch.Tensor]


class LossImplError(ValueError):
    """A loss implementation that is unknown or not installed; the message names the fix."""


def _liger() -> LossFn:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    modules: dict[int, torch.nn.Module] = {}

    def loss(hidden, weight, targets, scale=1.0, chunk_size=None, ignore_index=IGNORE_INDEX, vocab_size=None):
        fn = modules.setdefault(ignore_index, LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index))
        h = hidden.reshape(-1, hidden.size(-1)) * scale
        return fn(weight[:vocab_size] if vocab_size else weight, h, targets.reshape(-1))

    return loss


def _cce() -> LossFn:
    from cut_cross_entropy import linear_cross_entropy

    def loss(hidden, weight, targets, scale=1.0, chunk_size=None, ignore_index=IGNORE_INDEX, vocab_size=None):
        h = hidden.reshape(-1, hidden.size(-1)) * scale
        return linear_cross_entropy(h, weight[:vocab_size] if vocab_size else weight, targets.reshape(-1),
                                    ignore_index=ignore_index)

    return loss


def loss_function(impl: str) -> LossFn:
    """The loss of ``trainer.loss_impl``, with lab.losses.cross_entropy's signature."""
    if impl == "lab":
        return cross_entropy
    builders = {"liger": (_liger, "liger-kernel"), "cce": (_cce, "cut-cross-entropy")}
    if impl not in builders:
        raise LossImplError(f"trainer.loss_impl={impl!r}: use one of {', '.join(LOSS_IMPLS)}")
    build, package = builders[impl]
    try:
        return build()
    except ImportError as err:
        raise LossImplError(f"trainer.loss_impl={impl}: {package} is not installed ({err}); install the gpu extra "
                            "(pip install -e '.[gpu]') or use trainer.loss_impl=lab") from err


def available(impl: str) -> Optional[LossFn]:
    """The loss if it can be built here, else None (for tests and the acceptance script)."""
    try:
        return loss_function(impl)
    except LossImplError:
        return None
