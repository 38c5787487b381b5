"""Fixed cost per run of a sweep: runs sharing one process (lab-sweep, basic launcher) vs one process per run.

    .venv/bin/python benchmarks/sweep_overhead.py --json benchmarks/results/sweep_overhead.json

Both modes train the same tiny model (experiment=smoke, size 1, 50 steps) into the same MLflow SQLite store,
created before either is timed. Per run:

- launch -> first optimizer step ("head"): from the moment the run is launched to the timestamp of its first
  `train/loss` metric in MLflow (logged right after optimizer step 1). In-process, "launched" is when Hydra's basic
  launcher starts the job (its "#i : overrides" log record, before the job's config is composed); per process, it
  is just before `subprocess.Popen(["lab-train", ...])`.
- the whole fixed cost ("head + tail"): also the time from the last `train/loss` to the next launch (in-process:
  final validation, summary artifacts, run termination, Hydra's job bookkeeping) or to the process exit.

The first in-process run also pays the one-time imports of torch, Lightning and MLflow; it is reported apart and
left out of the per-run median. Target (issue 3): in-process under 1 s per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: one core per run in both modes

from mlflow.tracking import MlflowClient  # noqa: E402

from sweeps.cli import run_sweep  # noqa: E402

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")
RUN = ["experiment=smoke", "trainer.threads=1", "trainer.progress_bar=false"]


class LaunchTimes(logging.Handler):
    """Wall time at which Hydra's basic launcher starts each job, by run name."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"tracking\.run_name='([^']+)'", record.getMessage())
        if match:
            self.at[match.group(1)] = record.created


def loss_times(client: MlflowClient, run_id: str) -> tuple[float, float, int]:
    """(first, last) train/loss timestamps in seconds and the number of steps."""
    history = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    return history[0].timestamp / 1000, history[-1].timestamp / 1000, len(history)


def paths(workdir: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache"]


def in_process(workdir: Path, n: int) -> dict:
    launches = LaunchTimes()
    logging.getLogger("hydra._internal.core_plugins.basic_launcher").addHandler(launches)
    t0 = time.time()
    summary = run_sweep([*RUN, "sweep=grid", "hydra.sweeper.design.sizes=[1]",
                         "hydra.sweeper.design.tokens_per_param=[1]", f"hydra.sweeper.design.seeds={list(range(n))}",
                         f"hydra.sweep.dir={workdir}/multirun", *paths(workdir)])
    t_end = time.time()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = [(o.name, *loss_times(client, o.run_id)) for o in summary.outcomes]
    heads = [first - launches.at[name] for name, first, _, _ in runs]
    # tail of run i: its last step to the launch of run i+1 (the last run: to the sweep's return)
    tails = [launches.at[runs[i + 1][0]] - last for i, (_, _, last, _) in enumerate(runs[:-1])]
    tails.append(t_end - runs[-1][2])
    step_s = statistics.median((last - first) / (steps - 1) for _, first, last, steps in runs)
    return {"runs": n, "steps_per_run": runs[0][3], "first_run_head_s": runs[0][1] - t0,
            "sweep_start_s": launches.at[runs[0][0]] - t0,
            "head_s": statistics.median(heads[1:]), "head_plus_tail_s": statistics.median(
                h + t for h, t in zip(heads[1:], tails[1:])),
            "heads_s": heads, "tails_s": tails, "step_s": step_s}


def per_process(workdir: Path, n: int) -> dict:
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    heads, totals = [], []
    for i in range(n):
        name = f"bench-process-{i}"
        t_launch = time.time()
        proc = subprocess.run([LAB_TRAIN, *RUN, "model.size=1", "budget.tokens=12640", f"seed={i}",
                               f"tracking.run_name={name}", *paths(workdir)], cwd=workdir, capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        t_exit = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"lab-train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        run = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                 f"attributes.run_name = '{name}'", max_results=1)[0]
        first, last, _ = loss_times(client, run.info.run_id)
        heads.append(first - t_launch)
        totals.append(first - t_launch + t_exit - last)
    return {"runs": n, "head_s": statistics.median(heads), "head_plus_tail_s": statistics.median(totals),
            "heads_s": heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/sweep_overhead.json"),
                        help="write the figures here")
    parser.add_argument("--runs", type=int, default=6, help="in-process runs (the first is reported apart)")
    parser.add_argument("--processes", type=int, default=3, help="runs launched as one lab-train process each")
    args = parser.parse_args()
    out = args.json.resolve()
    cwd = os.getcwd()

    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # MLflow artifacts and Hydra outputs stay in the temporary directory
        try:
            # The store's creation (~5 s) is not a per-run cost; made by another process so that this one
            # imports Lightning inside the timed sweep, as a fresh `lab-sweep` would.
            subprocess.run([sys.executable, "-c", "import sys; from tracking.store import ensure_store; "
                            "ensure_store(sys.argv[1])", f"sqlite:///{workdir}/mlflow.db"], check=True)
            inproc = in_process(workdir, args.runs)
            procs = per_process(workdir, args.processes)
        finally:
            os.chdir(cwd)

    result = {
        "benchmark": "sweep_overhead", "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "in_process": inproc, "per_process": procs, "ratio_head": procs["head_s"] / inproc["head_s"],
        "ratio_head_plus_tail": procs["head_plus_tail_s"] / inproc["head_plus_tail_s"],
        "target_in_process_s": 1.0, "meets_target": inproc["head_plus_tail_s"] < 1.0,
        # in optimizer steps of the same model: roughly independent of how loaded the shared machine is
        "in_process_steps_equivalent": inproc["head_plus_tail_s"] / inproc["step_s"],
        "per_process_steps_equivalent": procs["head_plus_tail_s"] / inproc["step_s"],
    }
    print(f"fixed cost per run of a tiny model ({inproc['steps_per_run']} steps of {inproc['step_s'] * 1e3:.1f} ms):")
    print(f"  {'':28}{'launch -> step 1':>18}{'+ tail (whole fixed cost)':>28}")
    print(f"  {'in-process (lab-sweep)':28}{inproc['head_s']:>17.2f}s{inproc['head_plus_tail_s']:>27.2f}s")
    print(f"  {'one process per run':28}{procs['head_s']:>17.2f}s{procs['head_plus_tail_s']:>27.2f}s")
    print(f"  ratio {result['ratio_head']:.1f}x (launch -> step 1), {result['ratio_head_plus_tail']:.1f}x (whole)")
    print(f"  once per in-process sweep: {inproc['sweep_start_s']:.2f}s from run_sweep() to the first launch "
          f"(imports, design, every run's config validated, parent run); the first run reached step 1 after "
          f"{inproc['first_run_head_s']:.2f}s")
    print(f"  in steps of this model: {result['in_process_steps_equivalent']:.0f} in-process vs "
          f"{result['per_process_steps_equivalent']:.0f} per process (a load-independent view)")
    print(f"  target < 1 s per run in-process: {'met' if result['meets_target'] else 'NOT met'} "
          f"(load average {result['load_avg_1m']:.1f} on {result['cores']} cores while measuring)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
