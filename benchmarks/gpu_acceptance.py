"""One command that validates every GPU path of the training lab and prints a table (and writes JSON).

    python benchmarks/gpu_acceptance.py --prepare          # on a CPU machine beforehand: corpus + dry configs
    python benchmarks/gpu_acceptance.py                    # on one H100: S0-S4, < 8 minutes
    python benchmarks/gpu_acceptance.py --dry-run          # every stage's CPU-possible part (in the test suite)

Stages (issue 14):
- S0 versions, device, peak FLOP/s, TF32 state.
- S1 kernel checks at 124M shapes (benchmarks/acceptance_kernels.py): flash vs math attention, naive vs chunked
  loss (V = 50,257 and 50,304, some targets ignored; |Δloss| < 1e-3, gradient cosine > 0.9999), compiled vs eager
  block, fused vs foreach AdamW on a plain and a one-rank FSDP2 model, clipping on sharded vs whole.
- S2 lab-train on one GPU at 124M for ~30 steps: asserts bf16, fused AdamW, flash kernels, syncs per step (CUDA
  sync debug mode), loss falling; tokens/s and MFU over the steps that follow neither validation nor checkpoint.
- S3 trainer=fsdp on one GPU: kill -9 mid-run, resume=true, every step once, curve equal to an uninterrupted run
  within 1e-3.
- S4 MFU at 124M and 350M: lab-train against a plain compiled PyTorch loop of the same model in the same process:
  tokens/s, MFU and their ratio.
The corpus is synthetic but learnable (each token has four likely successors; the loss falls from ln V ≈ 10.8 to
about 1.4 nats), written as llm.c shards with a 50,257-token vocabulary, so the run needs no network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracking.record import Checkpoint, Metric, Param

VOCAB = 50_257
LLMC_MAGIC, LLMC_VERSION, HEADER_WORDS = 20240520, 1, 256
DEFAULT_WORK = Path(".cache/gpu_acceptance")
MODELS = {  # d_model, n_layers, n_heads (GPT-2 small and medium shapes)
    "124M": (768, 12, 12),
    "350M": (1024, 24, 16),
}


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """An llm.c shard: 256 int32 header words (magic, version 1, count) then uint16 tokens."""
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[:3] = (LLMC_MAGIC, LLMC_VERSION, len(tokens))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def learnable_tokens(n_tokens: int, seed: int, chains: int = 4096) -> np.ndarray:
    """Tokens of a random sparse Markov chain: four successors per token with probabilities .55/.25/.15/.05
    (entropy ≈ 1.15 nats), run as ``chains`` independent chains in parallel so generation is vectorised."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 4))
    length = -(-n_tokens // chains)
    out = np.empty((chains, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, VOCAB, size=chains)
    for i in range(1, length):
        pick = np.searchsorted([0.55, 0.80, 0.95], rng.random(chains), side="right")
        out[:, i] = successors[out[:, i - 1], pick]
    return out.reshape(-1)[:n_tokens]


def prepare_corpus(work: Path, train_tokens: int, val_tokens: int) -> dict[str, str]:
    files = {"train": work / "data" / "train_000.bin", "val": work / "data" / "val_000.bin"}
    if not all(p.exists() for p in files.values()):
        tokens = learnable_tokens(train_tokens + val_tokens, seed=0)
        write_shard(files["train"], tokens[:train_tokens])
        write_shard(files["val"], tokens[train_tokens:])
    return {k: str(v) for k, v in files.items()}


def overrides(work: Path, data: dict[str, str], name: str, model: str, *, dry: bool, steps: int,
              extra: tuple[str, ...] = ()) -> list[str]:
    """lab-train overrides of one acceptance run (GPU presets; tiny CPU stand-ins in the dry run)."""
    if dry:
        shape = ["model.size=1", "model.seq_len=32", "batch.sequences=8", "batch.micro_batch=4", "trainer=cpu",
                 "trainer.threads=1"]
        seq, sequences = 32, 8
    else:
        d, L, H = MODELS[model]
        shape = ["model.size=null", f"model.d_model={d}", f"model.n_layers={L}", f"model.n_heads={H}",
                 "model.seq_len=1024", "batch.sequences=32", "batch.micro_batch=16", "trainer=gpu",
                 "trainer.val_every_tokens=null", "trainer.checkpoint_every_minutes=null"]
        seq, sequences = 1024, 32
    return [*shape, "data=tokens", f"data.train={data['train']}", f"data.val={data['val']}",
            f"model.vocab_size={VOCAB}", "model.vocab_multiple_of=128", "data.val_sequences=8",
            f"budget.tokens={steps * sequences * seq}", "optim.lr=1e-3", "trainer.progress_bar=false",
            f"tracking.uri=sqlite:///{work}/mlflow.db", f"checkpoint_dir={work}/ckpt",
            "tracking.experiment=acceptance", f"tracking.run_name={name}", *extra]


def history(work: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------- stages


def s0(device: str, dry: bool) -> dict[str, Any]:
    import lightning
    import torch

    from lab import flops, parallel

    if device == "cuda":
        parallel.enable_tf32()
    peak = flops.peak_flops(torch.device(device), torch.bfloat16) if device == "cuda" else None
    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "peak_bf16_flops": peak, "tf32": parallel.tf32_enabled() if device == "cuda" else False,
            "passed": dry or peak is not None}


def s1(device: str, dry: bool) -> dict[str, Any]:
    import acceptance_kernels

    checks = acceptance_kernels.run(device, dry)
    return {"checks": [{"name": n, "passed": ok, "detail": d} for n, ok, d in checks],
            "passed": all(ok for _, ok, _ in checks)}


def _steady(work: Path, run_id: str, key: str, skip_after: set[int]) -> float:
    values = [v for s, v in history(work, run_id, key) if s - 1 not in skip_after and s > 3]
    return statistics.median(values) if values else math.nan


def s2(device: str, dry: bool, work: Path, data: dict[str, str]) -> dict[str, Any]:
    import lightning as L
    import torch

    from lab import syncs
    from lab.run import train
    from lab.train import compose_config

    class Probe(L.Callback):
        def __init__(self) -> None:
            self.reads: list[int] = []
            self.cuda_syncs: list[int] = []
            self.fused = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.fused = trainer.optimizers[0].defaults.get("fused")
            self.start = syncs.host_reads()
            if device == "cuda":
                self.caught = __import__("warnings").catch_warnings(record=True)
                self.log = self.caught.__enter__()
                __import__("warnings").simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.reads.append(syncs.host_reads() - self.start)
            if device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
                self.caught.__exit__(None, None, None)
                self.cuda_syncs.append(sum("synchroniz" in str(w.message) for w in self.log))

    steps, every = (8, 4) if dry else (30, 10)
    probe = Probe()
    cfg = compose_config(overrides(work, data, "s2", "124M", dry=dry, steps=steps,
                                   extra=(f"trainer.val_every_steps={every}", f"trainer.checkpoint_every_steps={every}")))
    result = train(cfg, callbacks=[probe])
    loss = [v for _, v in history(work, result.run_id, Metric.TRAIN_LOSS)]
    skip = {s for s in range(steps + 1) if s % every == 0}
    steady = [i for i in range(1, steps - 1) if (i + 1) % every != 0 and i % every != 0]
    out = {"steps": len(loss), "loss_first": loss[0], "loss_last": loss[-1],
           "host_reads_per_step": max(probe.reads[i] for i in steady),
           "cuda_syncs_per_step": max(probe.cuda_syncs[i] for i in steady) if probe.cuda_syncs else None,
           "fused_adamw": probe.fused, "bf16": cfg.trainer.precision == "bf16-mixed",
           "flash": bool(torch.backends.cuda.flash_sdp_enabled()) if device == "cuda" else None,
           "tokens_per_s": _steady(work, result.run_id, Metric.TOKENS_PER_S, skip),
           Metric.MFU: _steady(work, result.run_id, Metric.MFU, skip) if device == "cuda" else None}
    ok = out["steps"] == steps and out["loss_last"] < out["loss_first"] and out["host_reads_per_step"] <= 1
    if not dry:
        ok = ok and out["bf16"] and out["fused_adamw"] and out["flash"] and (out["cuda_syncs_per_step"] or 0) <= 1
    return {**out, "passed": bool(ok)}


def s3(device: str, dry: bool, work: Path, data: dict[str, str]) -> dict[str, Any]:
    """Kill -9 an FSDP run after its first checkpoint, resume it, compare with an uninterrupted run."""
    from lab.checkpoints import AtomicModelParallelStrategy
    from lab.parallel import lightning_strategy
    from lab.run import prepare
    from lab.train import compose_config

    steps = 20
    extra = ("trainer=gpu_fsdp", "trainer.devices=1", "trainer.val_every_steps=10", "trainer.checkpoint_every_steps=5")
    if dry:  # the CPU part: the configs compose and pass every check, and the strategy publishes atomically
        cfg = compose_config(overrides(work, data, "s3", "124M", dry=True, steps=steps,
                                       extra=("trainer=fsdp", "trainer.devices=1")))
        prepare(cfg)
        ok = isinstance(lightning_strategy(cfg.trainer), AtomicModelParallelStrategy)
        return {"note": "kill/resume on CPU: tests/lab/test_parallel.py and tests/lab/test_checkpoints.py",
                "passed": ok}
    lab_train = str(Path(sys.executable).parent / "lab-train")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def launch(name: str, *more: str) -> subprocess.Popen:
        args = overrides(work, data, name, "124M", dry=False, steps=steps, extra=(*extra, *more))
        return subprocess.Popen([lab_train, *args], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    whole = launch("s3-whole")
    whole.wait(timeout=400)
    killed = launch("s3-killed")
    meta = work / "ckpt" / "acceptance" / "s3-killed" / Checkpoint.LAST / Checkpoint.SHARDED_META
    deadline = time.monotonic() + 300
    while not meta.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    resumed = launch("s3-killed", "resume=true")
    resumed.wait(timeout=400)
    ids = {}
    for name in ("s3-whole", "s3-killed"):
        run = json.loads((work / "ckpt" / "acceptance" / name / Checkpoint.RUN_RECORD).read_text())
        ids[name] = run["run_id"]
    a, b = history(work, ids["s3-killed"], Metric.TRAIN_LOSS), history(work, ids["s3-whole"], Metric.TRAIN_LOSS)
    once = [s for s, _ in a] == list(range(1, steps + 1))
    worst = max((abs(x - y) for (_, x), (_, y) in zip(a, b)), default=math.inf)
    return {"every_step_once": once, "worst_loss_diff": worst, "passed": once and worst < 1e-3}


def plain_compiled_loop(cfg: Any, data: Any, steps: int) -> float:
    """Median step time of a plain PyTorch loop: compiled blocks and loss, bf16 autocast, fused AdamW, pinned
    non-blocking batches: the loop a user would write, on the same model and batches as lab-train."""
    import torch

    from lab.data import StepBatches, TokenSampler
    from lab.losses import cross_entropy
    from lab.model import GPT
    from lab.run import model_config

    torch.manual_seed(cfg.seed)
    model = GPT(model_config(cfg)).cuda()
    for block in model.blocks:
        block.compile()
    loss_fn = torch.compile(cross_entropy)
    opt = torch.optim.AdamW(model.param_groups(cfg.optim.lr, cfg.optim.weight_decay), fused=True)
    batches = StepBatches(TokenSampler(data.train_tokens, cfg.model.seq_len, cfg.seed), cfg.batch.sequences,
                          cfg.batch.micro_batch, max_steps=steps)
    ends = []
    for batch in batches:
        x, y = (batch[k].pin_memory().cuda(non_blocking=True) for k in ("x", "y"))
        for i in range(x.shape[0]):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model.hidden(x[i]), model.output_weight, y[i], vocab_size=cfg.model.vocab_size)
            (loss / x.shape[0]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        ends.append(time.perf_counter())
    return statistics.median(b - a for a, b in zip(ends[5:], ends[6:]))


def s4(device: str, dry: bool, work: Path, data: dict[str, str]) -> dict[str, Any]:
    from lab import flops
    from lab.run import prepare, train
    from lab.train import compose_config

    rows, ok = {}, True
    for model in MODELS if not dry else ("124M",):  # the dry run's stand-in is one tiny model
        steps = 25
        cfg = compose_config(overrides(work, data, f"s4-{model}", model, dry=dry, steps=steps,
                                       extra=("trainer.val_every_steps=1000", "trainer.checkpoint_every_steps=1000")))
        p = prepare(cfg)
        per_token = flops.model_flops_per_token(p.gpt_cfg)
        if dry:
            rows[model] = {Param.MODEL_FLOPS_PER_TOKEN: per_token}
            continue
        result = train(cfg)
        lab_tps = _steady(work, result.run_id, Metric.TOKENS_PER_S, set())
        plain_tps = cfg.batch.sequences * cfg.model.seq_len / plain_compiled_loop(cfg, p.data, steps)
        peak = p.peak_flops
        rows[model] = {Param.MODEL_FLOPS_PER_TOKEN: per_token, "lab_tokens_per_s": lab_tps,
                       "plain_tokens_per_s": plain_tps, "ratio": lab_tps / plain_tps,
                       "lab_mfu": lab_tps * per_token / peak if peak else None,
                       "plain_mfu": plain_tps * per_token / peak if peak else None}
        ok = ok and rows[model]["ratio"] >= 0.95
    return {"models": rows, "passed": ok}


# ---------------------------------------------------------------- driver


def run_stage(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # recorded in the table and the JSON, and the exit status says a stage failed
        out = {"passed": False, "error": f"{type(err).__name__}: {err}"}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'stage':<6}{'result':<8}{'seconds':>8}  details"]
    for name, r in results.items():
        shown = {k: v for k, v in r.items() if k not in ("passed", "seconds", "checks")}
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        lines.append(f"{name:<6}{'PASS' if r['passed'] else 'FAIL':<8}{r['seconds']:>8}  {text}")
        for c in r.get("checks", []):
            lines.append(f"{'':<6}{'ok' if c['passed'] else 'FAIL':<8}{'':>8}  {c['name']}: {c['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true", help="build the offline corpus and dry-compose every config")
    ap.add_argument("--dry-run", action="store_true", help="every stage's CPU-possible part, small shapes")
    ap.add_argument("--work", type=Path, default=None, help=f"working directory (default {DEFAULT_WORK})")
    ap.add_argument("--json", type=Path, default=None, help="results file (default <work>/acceptance.json)")
    ap.add_argument("--stages", default="S0,S1,S2,S3,S4")
    args = ap.parse_args(argv)
    work = (args.work or (Path(tempfile.mkdtemp(prefix="acceptance_")) if args.dry_run else DEFAULT_WORK)).resolve()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(".cache/torchinductor").resolve()))
    from lab.run import quiet_lightning

    quiet_lightning()
    dry = args.dry_run
    sizes = (200_000, 20_000) if dry else (20_000_000, 200_000)
    data = prepare_corpus(work, *sizes)
    if args.prepare:
        from lab.run import prepare
        from lab.train import compose_config

        # Every GPU config (S2, S4 at both sizes, S3's FSDP one) composes and passes its checks; no GPU needed.
        for model, extra in [(m, ()) for m in MODELS] + [("124M", ("trainer=gpu_fsdp", "trainer.devices=1"))]:
            prepare(compose_config(overrides(work, data, f"prepare-{model}", model, dry=False, steps=25, extra=extra)))
        print(f"prepared {work}: corpus {data['train']} and the configs of S2-S4")
        return 0
    import torch

    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    stages = {"S0": lambda: s0(device, dry), "S1": lambda: s1(device, dry), "S2": lambda: s2(device, dry, work, data),
              "S3": lambda: s3(device, dry, work, data), "S4": lambda: s4(device, dry, work, data)}
    results = {name: run_stage(name, stages[name]) for name in args.stages.split(",")}
    print(table(results))
    out = args.json or work / "acceptance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dry_run": dry, "device": device, "stages": results}, indent=2, default=str))
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
