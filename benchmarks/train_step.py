"""Tokens/s of lab-train's loop (Lightning + MLflow logging + noise scale) against a plain PyTorch loop.

Both train the same model on the same batches with the same optimizer and accumulation; the ratio of median
step times after warmup is printed and written as JSON. Rounds alternate between the two loops so that a noisy
neighbour on a shared machine hurts both alike. Target: ratio >= 0.95.

    python benchmarks/train_step.py --json benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from lab.data import StepBatches, TokenSampler
from lab.losses import cross_entropy
from lab.model import GPT
from lab.run import model_config, prepare, execute, quiet_lightning
from lab.train import compose_config

WARMUP = 5


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def lab_loop(overrides: list[str]) -> list[float]:
    timer = StepTimer()
    execute(prepare(compose_config(overrides)), callbacks=[timer])
    return [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP:]


def plain_loop(overrides: list[str]) -> list[float]:
    cfg = compose_config(overrides)
    p = prepare(cfg)
    torch.manual_seed(cfg.seed)
    model = GPT(model_config(cfg))
    opt = torch.optim.AdamW(model.param_groups(cfg.optim.lr, cfg.optim.weight_decay),
                            betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps, foreach=True)
    batches = StepBatches(TokenSampler(p.data.train_tokens, cfg.model.seq_len, cfg.seed),
                          sequences_at_step=lambda s, _t: p.plan[s].sequences, micro_batch=cfg.batch.micro_batch,
                          max_steps=len(p.plan))
    ends = []
    for batch in batches:
        for g in opt.param_groups:
            g["lr"] = p.plan[batch["step"]].lr
        accum = batch["x"].shape[0]
        for i in range(accum):
            loss = cross_entropy(model.hidden(batch["x"][i]), model.output_weight, batch["y"][i],
                                 scale=model.logit_scale)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends, ends[1:])][WARMUP:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/train_step.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=4)
    args = ap.parse_args()
    quiet_lightning()
    work = Path(tempfile.mkdtemp(prefix="train_step_"))
    seq_len, sequences = 128, 16
    base = [f"model.size={args.size}", f"model.seq_len={seq_len}", f"batch.sequences={sequences}",
            "batch.micro_batch=8", f"budget.tokens={args.steps * sequences * seq_len}",
            f"trainer.val_every_steps={10 * args.steps}", f"trainer.checkpoint_every_steps={10 * args.steps}",
            "trainer.progress_bar=false", f"tracking.uri=sqlite:///{work}/mlflow.db",
            f"checkpoint_dir={work}/ckpt", "tracking.experiment=bench"]
    lab, plain = [], []
    for r in range(args.rounds):
        plain += plain_loop(base)
        lab += lab_loop([*base, f"tracking.run_name=bench-{r}"])
    tokens_per_step = sequences * seq_len
    lab_tps, plain_tps = tokens_per_step / statistics.median(lab), tokens_per_step / statistics.median(plain)
    result = {"model_size": args.size, "seq_len": seq_len, "batch_sequences": sequences, "steps": args.steps,
              "rounds": args.rounds, "lab_tokens_per_s": lab_tps, "plain_tokens_per_s": plain_tps,
              "ratio": lab_tps / plain_tps, "target": 0.95, "threads": torch.get_num_threads()}
    print(f"lab-train loop : {lab_tps:10.0f} tokens/s (median step {statistics.median(lab) * 1e3:.1f} ms)")
    print(f"plain PyTorch  : {plain_tps:10.0f} tokens/s (median step {statistics.median(plain) * 1e3:.1f} ms)")
    print(f"ratio lab/plain: {result['ratio']:.3f} (target >= 0.95)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
