"""Peak memory and time of the chunked (fused) linear + cross-entropy against the naive one, forward + backward.

GPT-2 shapes: vocab V = 50,257, sequence 1,024, batch 8 (M = 8,192 rows), d_model 768, float32. The naive path
builds the (M, V) logits (1.6 GB) and autograd keeps more of that size; the chunked one holds one (chunk, V)
block plus the (V, d) weight gradient. Target: memory_ratio = chunked / naive <= 0.25.

How memory is measured, honestly on a CPU: each path runs in a fresh process with a fixed glibc mmap threshold
(so freed tensors leave the resident set), the inputs are built, one warm-up pass runs, the peak RSS (VmHWM)
is reset to the current RSS, and the timed pass follows; its memory is VmHWM − RSS at the reset, i.e. everything
the pass allocates on top of its inputs (logits, softmax, gradients of hidden and weight). Time: the fastest of
``--repeats`` passes (a shared machine only ever slows a pass down).

    python benchmarks/fused_ce.py --json benchmarks/results/fused_ce.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PATHS = ("naive", "chunked")


def worker(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from lab.losses import cross_entropy
    from lab.throughput import current_rss_bytes, peak_memory_bytes, reset_peak_memory

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    M = args.batch * args.seq_len
    hidden = torch.randn(M, args.d_model, generator=g).requires_grad_()  # (M, d)
    weight = (torch.randn(args.vocab, args.d_model, generator=g) * 0.02).requires_grad_()  # (V, d)
    targets = torch.randint(0, args.vocab, (M,), generator=g)
    chunk = None if args.worker == "naive" else args.chunk

    def one_pass() -> tuple[float, float]:
        hidden.grad = weight.grad = None
        t0 = time.perf_counter()
        loss = cross_entropy(hidden, weight, targets, chunk_size=chunk)
        loss.backward()
        return time.perf_counter() - t0, float(loss)

    one_pass()  # warm-up: first-touch page faults, thread pools, the weight gradient buffer
    cpu = torch.device("cpu")
    times, memory = [], []
    for _ in range(args.repeats):
        hidden.grad = weight.grad = None
        base = current_rss_bytes()
        reset_peak_memory(cpu)
        dt, loss = one_pass()
        times.append(dt)
        memory.append(peak_memory_bytes(cpu) - base)
    return {"seconds": min(times), "peak_bytes": max(memory), "loss": loss, "rss_bytes": current_rss_bytes()}


def run_fresh(path: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", path, "--vocab", str(args.vocab), "--seq-len", str(args.seq_len),
           "--batch", str(args.batch), "--d-model", str(args.d_model), "--chunk", str(args.chunk),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    # Fixed mmap threshold: every tensor above 64 KiB is its own mapping, returned to the OS when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/fused_ce.json"))
    ap.add_argument("--vocab", type=int, default=50_257)
    ap.add_argument("--seq-len", type=int, default=1_024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--chunk", type=int, default=1_024, help="rows per chunk of the fused path")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    res = {path: run_fresh(path, args) for path in PATHS}
    naive, chunked = res["naive"], res["chunked"]
    result = {
        "vocab": args.vocab, "seq_len": args.seq_len, "batch": args.batch, "d_model": args.d_model,
        "chunk_rows": args.chunk, "threads": args.threads, "repeats": args.repeats,
        "naive_peak_mb": naive["peak_bytes"] / 2**20, "chunked_peak_mb": chunked["peak_bytes"] / 2**20,
        "naive_seconds": naive["seconds"], "chunked_seconds": chunked["seconds"],
        "memory_ratio": chunked["peak_bytes"] / naive["peak_bytes"],
        "time_ratio": chunked["seconds"] / naive["seconds"],
        "loss_abs_diff": abs(chunked["loss"] - naive["loss"]),
        "target_memory_ratio": 0.25,
    }
    for path in PATHS:
        print(f"{path:8s}: peak +{res[path]['peak_bytes'] / 2**20:8.1f} MB over the inputs, "
              f"{res[path]['seconds']:.2f} s forward+backward")
    print(f"memory_ratio {result['memory_ratio']:.3f} (target <= 0.25), time_ratio {result['time_ratio']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
