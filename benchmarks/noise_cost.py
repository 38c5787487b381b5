"""Cost of the gradient-noise-scale estimator (lab.noise) in lab-train's step: with it and without it.

Both arms run lab-train's real loop (lab.run.execute: Lightning, MLflow logging) on the same model, seed and
batches. *With*: the step as it trains, whose estimator costs one fused norm over the gradients after the first
micro-batch (plus one host sync), an EMA update, and the metric noise/b_simple every LOG_EVERY_STEPS steps; the step
gradient's norm is the one clipping computes anyway. *Without*: the same loop with that norm replaced by a constant,
so the estimator skips every step and logs nothing. Rounds alternate
between the arms (ABBA order) so that a noisy neighbour or a drift hurts both alike. Two ratios are printed: of the
process CPU time per step (mean over each run after warmup, the median over rounds; it includes the background
thread that sends metrics, and is the one a busy neighbour disturbs least) and of the median wall time per step.
The norm call itself is also timed inside the *with* arm: its median over the median step is the direct cost of
the measurement. Target: cost < 2% of the step.

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
        self.cpu: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())


@contextlib.contextmanager
def micro_norm(enabled: bool, calls: list[float]) -> Iterator[None]:
    """The estimator's norm as it is (timed into ``calls``), or replaced by a constant (the estimator then skips)."""
    real = parallel.grad_sq_norm

    def timed(params):
        t0 = time.perf_counter()
        out = real(params)
        calls.append(time.perf_counter() - t0)
        return out

    parallel.grad_sq_norm = timed if enabled else (lambda params: torch.tensor(float("nan")))
    try:
        yield
    finally:
        parallel.grad_sq_norm = real


def step_times(overrides: list[str], enabled: bool, calls: list[float]) -> tuple[list[float], float]:
    """Wall time of each step after warmup, and the process CPU time per step over them."""
    timer = StepTimer()
    with micro_norm(enabled, calls):
        execute(prepare(compose_config(overrides)), callbacks=[timer])
    cpu = (timer.cpu[-1] - timer.cpu[WARMUP]) / (len(timer.cpu) - 1 - WARMUP)
    return [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP:], cpu


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
    on, off, cpu_on, cpu_off, calls = [], [], [], [], []
    for r in range(args.rounds):
        for enabled in (True, False) if r % 2 == 0 else (False, True):  # ABBA: a drift hurts both arms alike
            wall, cpu = step_times([*base, f"tracking.run_name={'on' if enabled else 'off'}-{r}"], enabled,
                                   calls if enabled else [])
            (on if enabled else off).extend(wall)
            (cpu_on if enabled else cpu_off).append(cpu)
    t_on, t_off, t_norm = statistics.median(on), statistics.median(off), statistics.median(calls)
    c_on, c_off = statistics.median(cpu_on), statistics.median(cpu_off)
    result = {"model_size": args.size, "seq_len": args.seq_len, "batch_sequences": args.sequences,
              "micro_batch": args.micro_batch, "steps": args.steps, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "cpu_step_s_with": c_on, "cpu_step_s_without": c_off,
              "cpu_ratio_with_over_without": c_on / c_off, "median_step_s_with": t_on, "median_step_s_without": t_off,
              "wall_ratio_with_over_without": t_on / t_off, "median_norm_s": t_norm,
              "norm_fraction_of_step": t_norm / t_on, "target_fraction": TARGET}
    print(f"CPU per step with / without the estimator : {c_on * 1e3:8.2f} / {c_off * 1e3:8.2f} ms  ratio "
          f"{c_on / c_off:.4f} ({(c_on / c_off - 1) * 100:+.2f}%; median of {args.rounds} alternating rounds)")
    print(f"wall per step with / without              : {t_on * 1e3:8.2f} / {t_off * 1e3:8.2f} ms  ratio "
          f"{t_on / t_off:.4f} ({(t_on / t_off - 1) * 100:+.2f}%; medians of {len(on)} steps)")
    print(f"the estimator's norm alone                : {t_norm * 1e3:8.3f} ms = {t_norm / t_on * 100:.2f}% of the "
          f"step (target: cost < {TARGET * 100:.0f}%)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
