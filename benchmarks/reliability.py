"""Reliability benchmark (issue 8): concurrent workers and injected faults; is any run or metric step lost or doubled?

    .venv/bin/python benchmarks/reliability.py --json benchmarks/results/reliability.json
    .venv/bin/python benchmarks/reliability.py --only concurrency_sqlite,server_outage --outage-s 10 --json OUT

Scenarios, each in its own working directory with its own stores (PostgreSQL databases are created and dropped):

- ``concurrency_sqlite``: 8 lab-study workers on one study, MLflow and Optuna in SQLite (the default);
- ``concurrency_server``: the same through lab-server (MLflow on PostgreSQL) with Optuna on PostgreSQL;
- ``server_outage``: the tracking server stopped, then restarted on the same port and database, ``--outage-s``
  seconds while a lab-train run trains; ``server_frozen``: the same with the server hung (SIGSTOP/SIGCONT);
- ``crash_during_outage``: the server goes away, the run checkpoints and is SIGKILLed, the server returns, the run
  resumes (two faults);
- every ``scenario_*`` function of benchmarks/fault_scenarios.py, when that file exists (worker SIGKILL with Optuna
  heartbeat retry, SIGTERM preemption with checkpoint and requeue).

Each reports ``launched``, ``recorded``, ``lost``, ``duplicated``, ``faults_injected``, ``faults_survived`` (runs
as the unit; see reliability_scenarios.py) and the totals are summed. Printed ratios, measured in this one run:
recorded / launched and faults survived / injected; targets 1.0 with 0 lost and 0 duplicated. ``--launch exec``
(default) starts each study worker as its own ``lab-study`` command, ``fork`` forks them from one process that
imported the stack once (faster on a small machine; same stores, same races).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: every worker owns one core's share
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reliability_scenarios as rs  # noqa: E402

Scenario = Callable[..., dict[str, Any]]


def own_scenarios(outage_s: float, workers: int, launch: str) -> dict[str, Scenario]:
    return {
        "concurrency_sqlite": lambda d: rs.scenario_concurrency_sqlite(d, workers=workers, launch=launch),
        "concurrency_server": lambda d: rs.scenario_concurrency_server(d, workers=workers, launch=launch),
        "server_outage": lambda d: rs.scenario_server_outage(d, outage_s, mode="kill"),
        "server_frozen": lambda d: rs.scenario_server_frozen(d, outage_s),
        "crash_during_outage": rs.scenario_crash_during_outage,
    }


def fault_scenarios() -> dict[str, Scenario]:
    """Every ``scenario_*(workdir)`` of benchmarks/fault_scenarios.py (another helper's), if the file exists."""
    if importlib.util.find_spec("fault_scenarios") is None:
        return {}
    import fault_scenarios

    return {name.removeprefix("scenario_"): fn for name, fn in inspect.getmembers(fault_scenarios, inspect.isfunction)
            if name.startswith("scenario_") and fn.__module__ == fault_scenarios.__name__}


def run_one(name: str, scenario: Scenario, workdir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = scenario(workdir)
    except Exception as err:  # a scenario that cannot finish counts as a fault not survived, and is reported
        result = {k: 0 for k in rs.COUNT_KEYS} | {"faults_injected": 1,
                                                   "error": f"{type(err).__name__}: {err}",
                                                   "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - t0, 1)
    missing = [k for k in rs.COUNT_KEYS if k not in result]
    if missing:
        result.setdefault("error", f"scenario returned no {missing}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/reliability.json"))
    parser.add_argument("--outage-s", type=float, default=30.0, help="how long the tracking server is away")
    parser.add_argument("--workers", type=int, default=8, help="concurrent study workers")
    parser.add_argument("--launch", choices=("exec", "fork"), default="exec", help="how study workers start")
    parser.add_argument("--only", default=None, help="comma-separated scenario names")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the scenarios' stores here")
    args = parser.parse_args()

    scenarios = {**own_scenarios(args.outage_s, args.workers, args.launch), **fault_scenarios()}
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(scenarios))
        if unknown:
            parser.error(f"unknown scenarios {unknown}; known: {', '.join(scenarios)}")
        scenarios = {k: scenarios[k] for k in wanted}
    root = args.workdir or Path(tempfile.mkdtemp(prefix="lab-reliability-"))
    load_before = os.getloadavg()[0]
    results = {}
    for name, scenario in scenarios.items():
        print(f"--- {name}", flush=True)
        results[name] = r = run_one(name, scenario, root / name)
        print(f"    {' '.join(f'{k}={r.get(k)}' for k in rs.COUNT_KEYS)}  ({r['seconds']} s)"
              + (f"\n    error: {r['error']}" if "error" in r else "")
              + "".join(f"\n    problem: {p}" for p in ([] if "error" in r else rs.problems(r))), flush=True)
    totals = {k: sum(int(r.get(k, 0)) for r in results.values()) for k in rs.COUNT_KEYS}
    recorded_ratio = totals["recorded"] / totals["launched"] if totals["launched"] else float("nan")
    survived_ratio = totals["faults_survived"] / totals["faults_injected"] if totals["faults_injected"] else 1.0
    print(f"\ntotal: {' '.join(f'{k}={v}' for k, v in totals.items())}")
    print(f"recorded / launched = {recorded_ratio:.3f}   faults survived / injected = {survived_ratio:.3f}   "
          f"(target 1.000 and 1.000, 0 lost, 0 duplicated)")
    out = {**totals, "recorded_per_launched": recorded_ratio, "faults_survived_per_injected": survived_ratio,
           "scenarios": results, "outage_s": args.outage_s, "workers": args.workers, "launch": args.launch,
           "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}, "workdir": str(root)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    ok = totals["lost"] == 0 and totals["duplicated"] == 0 and survived_ratio == 1.0 and recorded_ratio == 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
