"""Stage S1 of benchmarks/gpu_acceptance.py: every fast kernel against its reference at 124M shapes (CUDA) or at
small shapes (the CPU dry run). Each check returns (name, passed, detail)."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lab import parallel
from lab.losses import cross_entropy
from lab.model import GPT, Block, GPTConfig

Check = tuple[str, bool, str]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def attention(device: str, dtype: torch.dtype, B: int, T: int, H: int, hd: int) -> Check:
    """Flash attention (cuDNN/efficient on the CPU, where flash is a math-like kernel) against the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hd, device=device, dtype=dtype, generator=g) for _ in range(3))
    fast_backend = SDPBackend.FLASH_ATTENTION
    with sdpa_kernel(fast_backend):
        fast = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    err = float((fast.float() - ref).abs().max())
    return "attention flash vs math", err < 2e-2, f"max |Δ| {err:.2e} ({dtype})"


def loss_paths(device: str, M: int, d: int, V: int, chunk: int, autocast: bool) -> Check:
    """Chunked (fused) against naive cross-entropy, some targets ignored: |Δloss| < 1e-3, gradient cosine > 0.9999."""
    g = torch.Generator(device=device).manual_seed(V)
    hidden = torch.randn(M, d, device=device, generator=g).requires_grad_()
    weight = (0.02 * torch.randn(V, d, device=device, generator=g)).requires_grad_()
    targets = torch.randint(0, V, (M,), device=device, generator=g)
    targets[::7] = -100
    out = {}
    for name, size in (("naive", None), ("chunked", chunk)):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = cross_entropy(hidden, weight, targets, chunk_size=size)
        out[name] = (loss.detach(), *torch.autograd.grad(loss, [hidden, weight]))
    dl = float((out["naive"][0] - out["chunked"][0]).abs())
    cos = min(_cos(a, b) for a, b in zip(out["naive"][1:], out["chunked"][1:]))
    return f"loss naive vs chunked V={V}", dl < 1e-3 and cos > 0.9999, f"|Δloss| {dl:.1e}, grad cos {cos:.6f}"


def compiled_block(device: str, cfg: GPTConfig, B: int) -> Check:
    """A compiled block against the eager one: values and input gradients."""
    torch.manual_seed(0)
    eager = Block(cfg).to(device)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    model = GPT(cfg).to(device)
    x = torch.randn(B, cfg.seq_len, cfg.d_model, device=device, requires_grad=True)
    outs = []
    for block in (eager, compiled):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            y = block(x, model.rope_cos, model.rope_sin)
        outs.append((y.detach().float(), torch.autograd.grad(y.float().square().mean(), x)[0]))
    err = float((outs[0][0] - outs[1][0]).abs().max())
    cos = _cos(outs[0][1], outs[1][1])
    return "compiled vs eager block", err < 5e-2 and cos > 0.999, f"max |Δ| {err:.2e}, grad cos {cos:.6f}"


def _adam_steps(model: torch.nn.Module, fused: bool, x: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    for _ in range(steps):
        loss = cross_entropy(model.hidden(x), model.output_weight, torch.roll(x, -1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().full_tensor() if parallel._is_dtensor(p) else p.detach() for p in model.parameters()]


def adamw(device: str, cfg: GPTConfig, sharded: bool) -> Check:
    """Fused against foreach AdamW after a few steps, on a plain model or a one-rank FSDP2 one."""
    torch.manual_seed(0)
    base = GPT(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), device=device)
    results = []
    for fused in (True, False):
        model = copy.deepcopy(base)
        if sharded:
            from torch.distributed.device_mesh import init_device_mesh

            parallel.shard(model, init_device_mesh(device, (1,)))
        results.append(_adam_steps(model, fused, x))
    err = max(float((a - b).abs().max()) for a, b in zip(*results))
    return f"AdamW fused vs foreach ({'FSDP2' if sharded else 'plain'})", err < 1e-5, f"max |Δθ| {err:.1e}"


def clipping(device: str, cfg: GPTConfig) -> Check:
    """Gradient clipping on a one-rank FSDP2 model (DTensor shards) against torch's on the whole model."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    whole = GPT(cfg).to(device)
    sharded = copy.deepcopy(whole)
    parallel.shard(sharded, init_device_mesh(device, (1,)))
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), device=device)
    norms = []
    for m in (whole, sharded):
        cross_entropy(m.hidden(x), m.output_weight, torch.roll(x, -1, 1)).backward()
    norms.append(float(torch.nn.utils.clip_grad_norm_(whole.parameters(), 0.1)))
    norms.append(float(parallel.clip_grad_norm(sharded.parameters(), 0.1)))
    after = [float(parallel.grad_sq_norm(m.parameters())) ** 0.5 for m in (whole, sharded)]
    ok = abs(norms[0] - norms[1]) <= 1e-4 * norms[0] and abs(after[0] - after[1]) <= 1e-4 * after[0]
    return "clipping sharded vs whole", ok, f"norm {norms[0]:.4g} vs {norms[1]:.4g}, after {after[1]:.4g}"


def with_one_rank_group(device: str, checks: list[Callable[[], Check]]) -> list[Check]:
    """Run checks that need a process group inside a one-rank group (gloo on CPU, NCCL on CUDA)."""
    import torch.distributed as dist

    store = tempfile.mktemp(prefix="acceptance_store_")
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)
    try:
        return [check() for check in checks]
    finally:
        dist.destroy_process_group()
        if os.path.exists(store):
            os.remove(store)


def run(device: str, dry: bool) -> list[Check]:
    """All S1 checks: 124M shapes on CUDA, small ones in the CPU dry run (no compile there: CPU compile is opt-in)."""
    if dry:
        cfg = GPTConfig(vocab_size=512, seq_len=32, d_model=64, n_layers=2, n_heads=2)
        checks = [attention(device, torch.float32, 2, 64, 2, 32)]
        checks += [loss_paths(device, 64, 64, V, 16, autocast=False) for V in (50_257, 50_304)]
        checks += [adamw(device, cfg, sharded=False)]
        checks += with_one_rank_group(device, [lambda: adamw(device, cfg, sharded=True), lambda: clipping(device, cfg)])
        return checks
    cfg = GPTConfig(vocab_size=50_304, seq_len=1024, d_model=768, n_layers=2, n_heads=12)
    checks = [attention(device, torch.bfloat16, 8, 1024, 12, 64)]
    checks += [loss_paths(device, 8 * 1024, 768, V, 4096, autocast=True) for V in (50_257, 50_304)]
    checks += [compiled_block(device, cfg, 8), adamw(device, cfg, sharded=False)]
    checks += with_one_rank_group(device, [lambda: adamw(device, cfg, sharded=True), lambda: clipping(device, cfg)])
    return checks
