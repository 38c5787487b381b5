"""Ratio benchmark: analysis.load's SQL fast path vs the MlflowClient path on a big SQLite store.

    python benchmarks/load_runs.py [--runs 1000] [--steps 1000] [--client-runs 20] [--json OUT]

The store: `--runs` runs in one experiment, each with params and tags as lab/ logs them, and at every one of
`--steps` steps the metrics train/loss, tokens and flops (plus val/loss every 10th step): 3.1M metric rows by
default. Runs, params and tags are written through MlflowClient; the metric rows are inserted with SQL straight into
MLflow's `metrics` and `latest_metrics` tables of that MLflow-created store (log_batch would take ~10 minutes for
3M rows at ~24 ms per 200 metrics; the rows are the same). The store is cached (default under
~/.cache/scaling-lab/) and reused by later runs with the same sizes.

Timed: `load_curves` over all runs by the SQL path (median of `--repeat`, wall and CPU seconds), and for reference
the same rows read row by row through sqlite3 (the SQL path's reader before it used an Arrow-native driver); the
client path (one get_metric_history call per run and metric) on 1 run and on `--client-runs` runs, extrapolated
linearly to all runs (fixed cost + per-run slope) because it takes tens of minutes in full; `load_runs` by the SQL
path. Targets:
SQL path ≥ 20x faster than the client path, and under 2 s. The 1-minute load average before and after is recorded:
on a shared machine the wall-clock times follow it, the CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from polars.testing import assert_frame_equal

from analysis.load import load_curves, load_runs
from tracking.record import Metric, Param

METRICS_PER_STEP = (Metric.TRAIN_LOSS, "tokens", "flops")
VAL_EVERY = 10
T0 = 1_700_000_000_000  # epoch ms
B_TOKENS = 256


def build_store(path: Path, runs: int, steps: int) -> None:
    """Write the benchmark store to `path` (via a temporary file, so an interrupted build is never reused)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param as MlflowParam, RunTag

    tmp = path.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    client = MlflowClient(f"sqlite:///{tmp}")
    experiment = client.create_experiment("bench", artifact_location=(path.parent / "bench-artifacts").as_uri())
    run_ids = []
    for i in range(runs):
        N = 1e5 * (1 + i % 10)
        run_id = client.create_run(experiment, run_name=f"bench-{i:04d}", start_time=T0 + i).info.run_id
        params = {"N": int(N), "N_total": int(N) + 16384, "optim.lr": 3e-3, "seq_len": 64, Param.B_TOKENS: B_TOKENS,
                  Param.B_SEQUENCES: 4, "model.d_model": 64, "optim.schedule": "cosine"}
        client.log_batch(run_id, params=[MlflowParam(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("sweep", "bench"), RunTag("design", "grid")])
        client.set_terminated(run_id, end_time=T0 + i + 1000 * (steps + 1))
        run_ids.append((run_id, N))
    with sqlite3.connect(tmp) as con:
        con.execute("PRAGMA synchronous = OFF")  # a throwaway file: durability does not matter while building
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,0)",
                        (row for run_id, N in run_ids for row in _rows(run_id, N, steps)))
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                        "VALUES (?,?,?,?,0,?)",
                        ((key, value, t, step, run_id) for run_id, N in run_ids
                         for key, value, t, _, step in _last_rows(run_id, N, steps)))
    tmp.rename(path)


def _values(N: float, step: int) -> dict[str, float]:
    loss = 2.0 + 1e3 / math.sqrt(N) + 3.0 / math.sqrt(step)
    return {Metric.TRAIN_LOSS: loss, "tokens": float(B_TOKENS * step), "flops": 6.0 * N * B_TOKENS * step,
            Metric.VAL_LOSS: loss + 0.05}


def _rows(run_id: str, N: float, steps: int):
    for step in range(1, steps + 1):
        values = _values(N, step)
        keys = METRICS_PER_STEP + ((Metric.VAL_LOSS,) if step % VAL_EVERY == 0 else ())
        for key in keys:
            yield key, values[key], T0 + 1000 * step, run_id, step


def _last_rows(run_id: str, N: float, steps: int):
    values = _values(N, steps)
    last_val = steps - steps % VAL_EVERY
    rows = [(key, values[key], T0 + 1000 * steps, run_id, steps) for key in METRICS_PER_STEP]
    if last_val:
        rows.append((Metric.VAL_LOSS, _values(N, last_val)[Metric.VAL_LOSS], T0 + 1000 * last_val, run_id, last_val))
    return rows


def timed(fn: Callable, repeat: int = 1) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds over `repeat` calls, and the last result."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def dbapi_read(store: Path) -> int:
    """The rows of load_curves read row by row through sqlite3 + polars.read_database (the SQL path before it
    used an Arrow-native driver), without the assembly: what the driver change alone saves."""
    import polars as pl

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
        return pl.read_database("SELECT m.run_uuid, m.key, m.step, m.value, m.is_nan, m.timestamp FROM metrics m "
                                "JOIN runs r ON r.run_uuid = m.run_uuid WHERE r.lifecycle_stage = 'active'",
                                connection).height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--client-runs", type=int, default=20, help="runs the client path is timed on")
    parser.add_argument("--repeat", type=int, default=5, help="timings of the SQL path (medians reported)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
                        / "scaling-lab")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    store = args.cache / f"bench_load_runs_r{args.runs}_s{args.steps}.db"
    built = not store.exists()
    build_s = 0.0
    if built:
        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {store} ...", flush=True)
        build_s, _, _ = timed(lambda: build_store(store, args.runs, args.steps))
    uri = f"sqlite:///{store}"

    load_before = os.getloadavg()[0]
    runs_wall, runs_cpu, runs = timed(lambda: load_runs(uri, path="sql"), repeat=args.repeat)
    sql_wall, sql_cpu, curves = timed(lambda: load_curves(uri, path="sql"), repeat=args.repeat)
    dbapi_wall, dbapi_cpu, _ = timed(lambda: dbapi_read(store), repeat=args.repeat)
    ids = runs["run_id"].to_list()
    k = min(args.client_runs, len(ids))
    load_curves(uri, run_ids=ids[:1], path="client")  # warm-up: mlflow's import and first store set-up
    one_wall, _, _ = timed(lambda: load_curves(uri, run_ids=ids[:1], path="client"), repeat=2)
    k_wall, k_cpu, client_k = timed(lambda: load_curves(uri, run_ids=ids[:k], path="client"))
    sql_k_wall, _, sql_k = timed(lambda: load_curves(uri, run_ids=ids[:k], path="sql"), repeat=args.repeat)
    assert_frame_equal(sql_k, client_k)  # same frames, or the timing compares different work
    # Fixed cost (client and store set-up, one run) plus a per-run slope; a noisy negative slope falls back to
    # the plain per-run average.
    per_run = (k_wall - one_wall) / (k - 1) if k > 1 and k_wall > one_wall else k_wall / k
    client_full = one_wall + per_run * (len(ids) - 1)

    figures = {
        "runs": len(ids), "steps": args.steps, "metric_rows": curves.height, "store": str(store),
        "store_built_now": built, "store_build_s": round(build_s, 1),
        "store_writer": "runs/params/tags via MlflowClient; metric rows via SQL INSERT into metrics/latest_metrics",
        "sql_load_curves_s": round(sql_wall, 3), "sql_load_curves_cpu_s": round(sql_cpu, 3),
        "sql_load_curves_us_per_row": round(1e6 * sql_wall / curves.height, 2),
        "sql_load_runs_s": round(runs_wall, 3), "sql_load_runs_cpu_s": round(runs_cpu, 3),
        "dbapi_read_only_s": round(dbapi_wall, 3), "dbapi_read_only_cpu_s": round(dbapi_cpu, 3),
        "timing": f"medians of {args.repeat} (client path: one timing)", "cpus": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "client_timed_runs": k, "client_1_run_s": round(one_wall, 3), "client_k_runs_s": round(k_wall, 3),
        "client_k_runs_cpu_s": round(k_cpu, 3), "sql_k_runs_s": round(sql_k_wall, 3),
        "client_full_s_extrapolated": round(client_full, 1),
        "extrapolation": "linear: client_1_run_s + (client_k_runs_s - client_1_run_s)/(k-1) * (runs-1)",
        "ratio_full": round(client_full / sql_wall, 1),
        "ratio_measured_k_runs": round(k_wall / sql_k_wall, 1),
        "targets": {"ratio_min": 20, "sql_load_curves_max_s": 2.0},
    }
    figures["meets_ratio"] = figures["ratio_full"] >= 20
    figures["meets_2s"] = sql_wall < 2.0
    print(f"store: {len(ids)} runs x {args.steps} steps, {curves.height:,} metric rows")
    print(f"SQL path    load_curves {sql_wall:6.2f} s (CPU {sql_cpu:.2f} s, "
          f"{figures['sql_load_curves_us_per_row']} us/row); load_runs {runs_wall:.2f} s; medians of {args.repeat}")
    print(f"row-by-row  sqlite3 read alone (no assembly) {dbapi_wall:6.2f} s (CPU {dbapi_cpu:.2f} s)")
    print(f"client path load_curves {k_wall:6.2f} s on {k} runs (SQL path on the same runs {sql_k_wall:.2f} s, "
          f"ratio {figures['ratio_measured_k_runs']}x); extrapolated to {len(ids)} runs: {client_full:.0f} s")
    print(f"ratio {figures['ratio_full']}x (target >= 20x: {'met' if figures['meets_ratio'] else 'MISSED'}); "
          f"SQL path under 2 s: {'met' if figures['meets_2s'] else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
