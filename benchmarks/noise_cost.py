"""Cost of the gradient-noise-scale estimator (lab.noise) in lab-train's step: with it and without it.

Both arms run lab-train's real loop (lab.run.execute: Lightning, MLflow logging) on the same model, seed and
batches. *With*: the step as it trains, whose estimator costs one fused norm over the gradients after the first
micro-batch (plus one host sync) and an EMA update; the step gradient's norm is the one clipping computes anyway.
*Without*: the same loop with that norm replaced by a constant, so the estimator skips every step. Rounds alternate
between the arms so that a noisy neighbour on a shared machine hurts both alike; the ratio of median step times
after warmup is printed. Because a 1-2% difference is within the noise of a shared machine, the norm call itself is
also timed inside the *with* arm: its median over the median step is the estimator's direct cost. Target: < 2%.

    python benchmarks/noise_cost.py --json benchmarks/results/noise_cost.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch

from lab import parallel
from lab.run import execute, prepare, quiet_lightning
from lab.train import compose_config

WARMUP = 5
TARGET = 0.02


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


@contextlib.contextmanager
def micro_norm(enabled: bool, calls: list[float]) -> Iterator[None]:
    """The estimator's norm as it is (timed into ``calls``), or replaced by a constant (the estimator then skips)."""
    real = parallel.grad_sq_norm

    def timed(params):
        t0 = time.perf_counter()
        out = real(params)
        calls.append(time.perf_counter() - t0)
        return out

    parallel.grad_sq_norm = timed if enabled else (lambda params: float("nan"))
    try:
        yield
    finally:
        parallel.grad_sq_norm = real


def step_times(overrides: list[str], enabled: bool, calls: list[float]) -> list[float]:
    timer = StepTimer()
    with micro_norm(enabled, calls):
        execute(prepare(compose_config(overrides)), callbacks=[timer])
    return [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/noise_cost.json"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=4, help="model.size dial")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=16, help="global batch (sequences)")
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()
    quiet_lightning()
    work = Path(tempfile.mkdtemp(prefix="noise_cost_"))
    base = [f"model.size={args.size}", f"model.seq_len={args.seq_len}", f"batch.sequences={args.sequences}",
            f"batch.micro_batch={args.micro_batch}", f"budget.tokens={args.steps * args.sequences * args.seq_len}",
            f"trainer.val_every_steps={10 * args.steps}", f"trainer.checkpoint_every_steps={10 * args.steps}",
            "trainer.progress_bar=false", f"tracking.uri=sqlite:///{work}/mlflow.db", f"checkpoint_dir={work}/ckpt",
            "tracking.experiment=bench"]
    on, off, calls = [], [], []
    for r in range(args.rounds):
        on += step_times([*base, f"tracking.run_name=on-{r}"], True, calls)
        off += step_times([*base, f"tracking.run_name=off-{r}"], False, [])
    t_on, t_off, t_norm = statistics.median(on), statistics.median(off), statistics.median(calls)
    result = {"model_size": args.size, "seq_len": args.seq_len, "batch_sequences": args.sequences,
              "micro_batch": args.micro_batch, "steps": args.steps, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "median_step_s_with": t_on, "median_step_s_without": t_off,
              "ratio_with_over_without": t_on / t_off, "median_norm_s": t_norm, "norm_fraction_of_step": t_norm / t_on,
              "target_fraction": TARGET}
    print(f"step with the estimator    : {t_on * 1e3:8.2f} ms (median of {len(on)})")
    print(f"step without the estimator : {t_off * 1e3:8.2f} ms (median of {len(off)})")
    print(f"ratio with/without         : {t_on / t_off:8.4f}  ({(t_on / t_off - 1) * 100:+.2f}%, rounds alternating)")
    print(f"estimator's norm per step  : {t_norm * 1e3:8.3f} ms = {t_norm / t_on * 100:.2f}% of the step "
          f"(target < {TARGET * 100:.0f}%)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
