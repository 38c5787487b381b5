"""Tokens/s and peak memory of the eager, compiled and fused-CE training steps, for 3 ladder sizes, on the CPU.

A step is what LitGPT runs on one micro-batch: forward through ``GPT.hidden``, the loss
(``lab.losses.cross_entropy``), backward, gradient clipping and AdamW. The paths differ only in what
``lab.parallel.apply`` and the loss are given: ``eager`` (reference), ``compiled`` (torch.compile of each block:
fused RMSNorm, SwiGLU, rotary), ``fused_ce`` (the chunked linear + cross-entropy that never builds the logits).

Speed: one process holds the three paths (same initial weights and batch) and runs their steps in turn, one of
each per round, so that a noisy neighbour on a shared machine slows all three alike; tokens/s comes from each
path's median step after warm-up (which compiles). Memory: each path in a fresh process (fixed glibc mmap
threshold, so freed tensors leave the resident set), warmed up, then the peak RSS of the timed steps above the
RSS when they start: activations, logits and temporaries (the method of benchmarks/fused_ce.py). Ratios are
path / eager. Vocabularies: 256 (the built-in byte-level corpus) and 50,257 (GPT-2 tokens), where the head
dominates these small models.

    python benchmarks/throughput.py --json benchmarks/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

PATHS = ("eager", "compiled", "fused_ce")
REPO = Path(__file__).resolve().parents[1]


def build_step(path: str, args: argparse.Namespace) -> tuple[Callable[[], float], Any]:
    """A function running one training step of ``path`` and returning its seconds; and the model config."""
    import torch

    from lab import parallel
    from lab.losses import cross_entropy
    from lab.model import GPT, GPTConfig, size_ladder

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, **size_ladder(args.size))
    model = GPT(cfg)
    parallel.apply(model, parallel.Parallelism(compile=path == "compiled"))
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.1), foreach=True)
    chunk = args.chunk if path == "fused_ce" else None
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.micro_batch, args.seq_len + 1), generator=g)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # (micro, T) each

    def step() -> float:
        t0 = time.perf_counter()
        loss = cross_entropy(model.hidden(x), model.output_weight, y, scale=model.logit_scale, chunk_size=chunk)
        loss.backward()
        parallel.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step, cfg


def speed_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lab.flops import flops_per_token

    torch.set_num_threads(args.threads)
    steps, warmup_s = {}, {}
    for path in PATHS:
        steps[path], cfg = build_step(path, args)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            steps[path]()
        warmup_s[path] = time.perf_counter() - t0
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for i in range(args.steps):
        order = PATHS[i % 3:] + PATHS[:i % 3]  # rotate, so no path always runs first
        for path in order:
            times[path].append(steps[path]())
    tokens = args.micro_batch * args.seq_len
    fpt = flops_per_token(cfg, head=True)
    return {path: {"tokens_per_s": tokens / statistics.median(times[path]),
                   "flops_per_s": tokens * fpt / statistics.median(times[path]),
                   "warmup_s": warmup_s[path]} for path in PATHS}


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lab.throughput import current_rss_bytes, peak_memory_bytes, reset_peak_memory

    torch.set_num_threads(args.threads)
    step, _ = build_step(args.path, args)
    for _ in range(args.warmup):
        step()
    cpu = torch.device("cpu")
    base = current_rss_bytes()
    reset_peak_memory(cpu)
    for _ in range(2):
        step()
    return {"step_peak_bytes": peak_memory_bytes(cpu) - base, "rss_bytes": base}


def run_fresh(worker: str, size: int, vocab: int, args: argparse.Namespace, path: str = "eager") -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", worker, "--path", path, "--size", str(size), "--vocab",
           str(vocab)] + [f"--{k.replace('_', '-')}={getattr(args, k)}"
                          for k in ("seq_len", "micro_batch", "chunk", "warmup", "steps", "threads")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "torchinductor"))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 6], help="lab.model.size_ladder dials")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[256, 50_257])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=256, help="rows per chunk of the fused loss")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="timed rounds (one step of every path each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", choices=("speed", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=PATHS, default="eager", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps((speed_worker if args.worker == "speed" else memory_worker)(args)))
        return

    rows = []
    for vocab in args.vocabs:
        for size in args.sizes:
            speed = run_fresh("speed", size, vocab, args)
            memory = {path: run_fresh("memory", size, vocab, args, path) for path in PATHS}
            row: dict[str, Any] = {"vocab": vocab, "size": size}
            for path in PATHS:
                row.update({f"{path}_{k}": v for k, v in {**speed[path], **memory[path]}.items()})
            for path in ("compiled", "fused_ce"):
                row[f"{path}_speed_ratio"] = speed[path]["tokens_per_s"] / speed["eager"]["tokens_per_s"]
                row[f"{path}_memory_ratio"] = memory[path]["step_peak_bytes"] / memory["eager"]["step_peak_bytes"]
            row["compile_faster"] = row["compiled_speed_ratio"] > 1.0
            rows.append(row)
            print(f"V={vocab:6d} size={size}: eager {speed['eager']['tokens_per_s']:8.0f} tok/s, "
                  f"compiled x{row['compiled_speed_ratio']:.2f} (mem x{row['compiled_memory_ratio']:.2f}), "
                  f"fused_ce x{row['fused_ce_speed_ratio']:.2f} (mem x{row['fused_ce_memory_ratio']:.2f})",
                  flush=True)
    result = {"seq_len": args.seq_len, "micro_batch": args.micro_batch, "chunk_rows": args.chunk,
              "threads": args.threads, "steps": args.steps, "device": "cpu", "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
