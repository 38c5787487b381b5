"""The critical-batch-size branch protocol (Merrill et al. 2025, "Critical Batch Size Revisited"), as a design.

Per model size and seed, one *reference* run trains D tokens at the base batch b_ref and keeps a checkpoint at each
token count T of ``checkpoint_tokens`` (``trainer.checkpoint_at_tokens``, lab.branching). From each
checkpoint one
*branch* per batch b of ``batch_sequences`` trains a window of W tokens with the lr of the reference's schedule
times the rescale rule's factor of b/b_ref (``init.lr_rescale``: sqrt, linear or none). b_ref is always among the
branches: that branch repeats the reference's own steps and is the comparison loss L_ref of its checkpoint, the
smallest B of the checkpoint when every other b is larger, which is what ``lab-fit cbs`` takes as reference by
default (else pass ``--reference-B``). The local critical batch size at T is then the largest B whose branch loss
stays within a tolerance of L_ref (analysis.laws.cbs).

The reference runs in stage 0 and the branches in stage 1 (RunSpec.stage): the DesignSweeper launches a stage only
once every run of the stages before it finished. A branch names its checkpoint by an interpolation,
``${checkpoint_dir}/${tracking.experiment}/<reference run name>/tokens-<T>.ckpt``, resolved when its config is
composed, so the design stays a pure function of its inputs.

Every branch of a checkpoint sees the same tokens (lab.branching), so their losses at T + W differ only by batch size
and lr. Names: ``cbs-N<N>-D<D>-B<b_ref>-ref-s<seed>`` and ``cbs-N<N>-D<D>-T<T>-B<b>-W<W>-s<seed>`` (B in tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from lab.config import LR_RESCALE_RULES
from sweeps.designs import Base, DesignError, RunSpec, _unique, sci, tokens_label
from tracking.record import Checkpoint, Design, Role, Tag


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DesignError(f"cbs: {message}")


def _as_tokens(name: str, value: float) -> int:
    _check(float(value) == int(value) and value > 0, f"{name}={value!r} must be a positive whole number of tokens")
    return int(value)


def checkpoint_override(reference_name: str, T: int) -> str:
    """The branch's ``init.checkpoint`` override, resolved against the composed config of the branch run."""
    path = f"${{checkpoint_dir}}/${{tracking.experiment}}/{reference_name}/{Checkpoint.branch_point(T)}"
    return f"init.checkpoint='{path}'"


def cbs(base: Base, tokens: float, checkpoint_tokens: Sequence[float], window_tokens: float,
        batch_sequences: Sequence[int], lr_rescale: str = "sqrt", seeds: Sequence[int] = (0,),
        reference_sequences: Optional[int] = None, micro_batch: Optional[int] = None) -> list[RunSpec]:
    """Reference runs (stage 0) and their branches (stage 1) at every ladder size: see the module docstring.

    tokens: D of each reference; checkpoint_tokens: branch points T, each a multiple of b_ref·seq_len (a step end)
    with T + window_tokens <= D; window_tokens: W, a multiple of every branch's b·seq_len so that all branches of a
    checkpoint end at the same T + W; batch_sequences: branch batches in sequences, multiples of micro_batch (b_ref
    is added if missing). reference_sequences (b_ref) and micro_batch default to the base config's batch.sequences
    and batch.micro_batch; the design sets both on every run, so they are design parameters, not overrides.
    """
    D, W = _as_tokens("tokens", tokens), _as_tokens("window_tokens", window_tokens)
    points = sorted({_as_tokens("checkpoint_tokens", t) for t in checkpoint_tokens})
    _check(len(points) > 0, "checkpoint_tokens is empty; give the branch points, e.g. [4096, 16384, 65536]")
    _check(lr_rescale in LR_RESCALE_RULES, f"lr_rescale={lr_rescale!r}: use one of {', '.join(LR_RESCALE_RULES)}")
    _check(bool(seeds) and len(set(seeds)) == len(seeds), f"seeds={list(seeds)}: give distinct integers")
    seq = base.seq_len
    micro = base.micro_batch if micro_batch is None else int(micro_batch)
    b_ref = base.batch_sequences if reference_sequences is None else int(reference_sequences)
    _check(micro >= 1, f"micro_batch={micro} must be at least 1 sequence")
    batches = sorted({int(b) for b in batch_sequences} | {b_ref})
    for b in batches:
        _check(b >= micro and b % micro == 0, f"batch of {b} sequences ({b * seq} tokens) is not a multiple of "
               f"batch.micro_batch={micro} sequences (B must be a multiple of micro_batch x seq_len = {micro * seq} "
               "tokens); use multiples of it, e.g. powers of two")
    step_ref = b_ref * seq
    for T in points:
        _check(T % step_ref == 0, f"checkpoint at T={T} tokens is not the end of a reference step (every "
               f"{step_ref} tokens: batch.sequences={b_ref} x model.seq_len={seq}); use "
               f"{max(T // step_ref, 1) * step_ref} or {(T // step_ref + 1) * step_ref}")
        _check(T + W <= D, f"checkpoint T={T} plus the window W={W} goes beyond the reference's D={D} tokens; move "
               f"the checkpoint to at most {D - W}, shorten window_tokens, or raise tokens")
    lcm = math.lcm(*(b * seq for b in batches))
    _check(W % lcm == 0, f"window_tokens={W} is not a whole number of steps of every branch batch "
           f"({[b * seq for b in batches]} tokens); use a multiple of {lcm}, e.g. {max(W // lcm, 1) * lcm}")
    specs = []
    for rung in base.rungs:
        point = f"N{sci(rung.N)}-D{sci(D)}"
        shared = (*rung.overrides, f"budget.tokens={D}", f"batch.micro_batch={micro}")
        for seed in seeds:
            ref = f"cbs-{point}-B{tokens_label(step_ref)}-ref-s{seed}"
            tags = {Tag.DESIGN: Design.CBS, Tag.POINT: point, Tag.SEED: str(seed)}
            specs.append(RunSpec(ref, (*shared, f"batch.sequences={b_ref}", f"seed={seed}",
                                       f"trainer.checkpoint_at_tokens=[{','.join(map(str, points))}]"),
                                 {**tags, Tag.ROLE: Role.REFERENCE}, stage=0))
            for T in points:
                for b in batches:
                    specs.append(RunSpec(
                        f"cbs-{point}-T{sci(T)}-B{tokens_label(b * seq)}-W{sci(W)}-s{seed}",
                        (*shared, f"batch.sequences={b}", f"seed={seed}", checkpoint_override(ref, T),
                         f"init.tokens={T}", f"init.window_tokens={W}", f"init.lr_rescale={lr_rescale}"),
                        {**tags, Tag.ROLE: Role.BRANCH, Tag.REFERENCE: ref}, stage=1))
    return _unique("cbs", specs)
