"""analysis.load against real MLflow stores written by MlflowClient (SQLite, and PostgreSQL when it answers)."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analysis.load import LoadError, load_curves, load_runs, load_table
from analysis.load.frames import CURVE_COLUMNS, RawCurves, assemble_curves

STEPS = 200  # optimizer steps logged per run
VAL_EVERY = 50
T0 = 1_700_000_000_000  # epoch ms
SEQ, B_SEQ = 64, 4
B_TOKENS = SEQ * B_SEQ


@dataclass
class Study:
    uri: str
    ids: dict[str, str]


def train_loss(N: float, step: int) -> float:
    return 2.0 + 1e3 / N ** 0.5 + 3.0 / step ** 0.5


def log_run(client, experiment_id: str, name: str, N: float, *, tags: dict | None = None, last_step: int = STEPS,
            nan_val_at: int | None = None, tokens: bool = True, status: str = "FINISHED", offset: int = 0) -> str:
    """One training run as lab/ records it (design §5): dotted params, batched per-step metrics, tags."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, run_name=name, tags=tags or {}, start_time=T0 + offset)
    run_id = run.info.run_id
    params = {"model.d_model": 64, "model.n_layers": 2, "optim.lr": 3e-3, "optim.schedule": "cosine",
              "budget.tokens": STEPS * B_TOKENS if N < 2e5 else "None",
              "budget.flops": "None" if N < 2e5 else 6 * N * STEPS * B_TOKENS, "seed": 0,
              "N": int(N), "N_total": int(N) + 256 * 64, "seq_len": SEQ, "B_tokens": B_TOKENS, "B_sequences": B_SEQ}
    metrics = []
    for step in range(1, last_step + 1):
        t = T0 + offset + 1000 * step
        metrics += [Metric("train/loss", train_loss(N, step), t, step), Metric("lr", 3e-3, t, step)]
        if tokens:
            metrics += [Metric("tokens", float(B_TOKENS * step), t, step),
                        Metric("flops", 6.0 * N * B_TOKENS * step, t, step)]
        if step % VAL_EVERY == 0 or step == last_step:
            value = math.nan if step == nan_val_at else train_loss(N, step) + 0.05
            metrics.append(Metric("val/loss", value, t, step))
    for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 1000],
                         params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [],
                         tags=[RunTag("git_commit", "abc123"), RunTag("git_dirty", "false")] if start == 0 else [])
    client.set_terminated(run_id, status=status, end_time=T0 + offset + 1000 * (last_step + 1))
    return run_id


def log_study(uri: str, artifacts: Path) -> Study:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    ladder = client.create_experiment("ladder", artifact_location=artifacts.as_uri())
    other = client.create_experiment("other", artifact_location=artifacts.as_uri())
    gone = client.create_experiment("gone", artifact_location=artifacts.as_uri())
    s1 = {"sweep": "s1", "design": "grid"}
    ids = {
        "small": log_run(client, ladder, "small", 1e5, tags=s1, offset=1),
        "big": log_run(client, ladder, "big", 4e5, tags=s1, offset=2),
        "failed": log_run(client, ladder, "failed", 2e5, tags={**s1, "status_reason": "diverged: val/loss NaN"},
                          last_step=150, nan_val_at=150, status="FAILED", offset=3),
        "summary": log_run(client, ladder, "summary", 1e5, tags={"sweep": "s1", "note": "no tokens"},
                           tokens=False, offset=4),
        "deleted": log_run(client, ladder, "deleted", 1e5, tags=s1, offset=5),
        "other": log_run(client, other, "other", 1e5, offset=6),
        "gone": log_run(client, gone, "gone", 1e5, offset=7),
    }
    parent = client.create_run(ladder, run_name="parent", tags={"sweep": "s2"}, start_time=T0 + 8)
    ids["parent"] = parent.info.run_id
    for i, child in enumerate(("child_a", "child_b")):
        tags = {"sweep": "s2", "mlflow.parentRunId": ids["parent"]}
        ids[child] = log_run(client, ladder, child, 1e5 * (i + 1), tags=tags, offset=9 + i)
    client.set_terminated(ids["parent"], end_time=T0 + 10**6)
    # Step 10 of child_a logged a second time, later and with other values (a replayed step).
    late = T0 + 10**7
    client.log_batch(ids["child_a"], metrics=[Metric("train/loss", 9.0, late, 10), Metric("tokens", 1.0, late, 10)])
    client.log_dict(ids["summary"], {"N": 1e5, "N_total": 1e5 + 256 * 64, "D": 51200, "C": 3.1e10,
                                     "final_val_loss": 2.5}, "summary.json")
    client.delete_run(ids["deleted"])
    client.delete_experiment(gone)
    return Study(uri, ids)


@pytest.fixture(scope="module")
def study(tmp_path_factory, new_sqlite_store) -> Study:
    root = tmp_path_factory.mktemp("mlflow")
    return log_study(new_sqlite_store(root), root / "artifacts")


def test_sql_and_client_paths_give_identical_frames(study):
    for experiment in (None, "ladder", ["other", "ladder"]):
        fast = load_runs(study.uri, experiment, path="sql")
        assert_frame_equal(fast, load_runs(study.uri, experiment, path="client"))
    assert_frame_equal(load_curves(study.uri, path="sql"), load_curves(study.uri, path="client"))
    some = dict(run_ids=[study.ids["child_a"], study.ids["failed"]], metrics=["val/loss", "train/loss"])
    assert_frame_equal(load_curves(study.uri, **some, path="sql"), load_curves(study.uri, **some, path="client"))


def test_runs_frame_values(study):
    runs = load_runs(study.uri)
    by_name = {row["run_name"]: row for row in runs.iter_rows(named=True)}
    assert set(by_name) == {"small", "big", "failed", "summary", "parent", "child_a", "child_b", "other"}
    small = by_name["small"]
    assert small["N"] == 1e5 and small["N_total"] == 1e5 + 256 * 64
    assert small["D"] == STEPS * B_TOKENS and small["C"] == 6 * 1e5 * STEPS * B_TOKENS
    assert (small["B"], small["B_sequences"], small["lr"], small["seq_len"]) == (B_TOKENS, B_SEQ, 3e-3, SEQ)
    assert small["loss"] == small["final_val_loss"] == pytest.approx(train_loss(1e5, STEPS) + 0.05)
    assert small["best_val_loss"] == small["final_val_loss"]  # the loss only falls
    assert small["final_train_loss"] == pytest.approx(train_loss(1e5, STEPS))
    assert small["steps"] == STEPS and small["status"] == "FINISHED"
    assert (small["sweep"], small["design"], small["git_commit"], small["git_dirty"]) == ("s1", "grid", "abc123",
                                                                                          "false")
    assert small["start_time"].timestamp() * 1000 == T0 + 1
    assert by_name["child_a"]["parent_run_id"] == by_name["child_b"]["parent_run_id"] == study.ids["parent"]
    assert by_name["small"]["parent_run_id"] is None

    failed = by_name["failed"]
    assert failed["status"] == "FAILED" and failed["status_reason"] == "diverged: val/loss NaN"
    assert math.isnan(failed["final_val_loss"]) and failed["steps"] == 150
    assert failed["best_val_loss"] == pytest.approx(train_loss(2e5, 100) + 0.05)  # NaN rows ignored

    summary = by_name["summary"]  # no tokens metric: D comes from summary.json, and C = 6·N·D from it
    assert summary["D"] == 51200 and summary["C"] == 6 * summary["N"] * 51200
    assert summary["tag.note"] == "no tokens"
    assert by_name["parent"]["loss"] is None and by_name["parent"]["C"] is None


def test_params_kept_as_typed_columns(study):
    runs = load_runs(study.uri, "ladder")
    assert runs.schema["param.model.d_model"] == pl.Float64
    assert runs.schema["param.optim.schedule"] == pl.String
    # "None" (Hydra's null) in some runs and numbers in others: numeric, with nulls.
    assert runs.schema["param.budget.flops"] == pl.Float64
    big = runs.filter(pl.col("run_name") == "big").row(0, named=True)
    assert big["param.budget.flops"] == 6 * 4e5 * STEPS * B_TOKENS and big["param.budget.tokens"] is None
    assert not any(c.startswith("tag.mlflow.") for c in runs.columns)


def test_deleted_runs_and_experiments_are_excluded(study):
    runs = load_runs(study.uri)
    assert study.ids["deleted"] not in runs["run_id"].to_list()
    assert study.ids["gone"] not in runs["run_id"].to_list()
    with pytest.raises(LoadError, match="gone"):
        load_runs(study.uri, "gone")
    with pytest.raises(LoadError, match="not active runs"):
        load_curves(study.uri, run_ids=[study.ids["deleted"]])


def test_filter_by_experiment_and_tags(study):
    assert load_runs(study.uri, "other")["run_name"].to_list() == ["other"]
    assert sorted(load_runs(study.uri, ["ladder", "other"])["experiment"].unique()) == ["ladder", "other"]
    s2 = load_runs(study.uri, filter_tags={"sweep": "s2"})
    assert sorted(s2["run_name"]) == ["child_a", "child_b", "parent"]
    children = load_runs(study.uri, "ladder", filter_tags={"mlflow.parentRunId": study.ids["parent"]})
    assert sorted(children["run_name"]) == ["child_a", "child_b"]
    assert load_runs(study.uri, "other", filter_tags={"sweep": "s1"}).height == 0
    with pytest.raises(LoadError, match=r"\['nope'\] not found.*available: \['Default', 'ladder', 'other'\]"):
        load_runs(study.uri, "nope")


def test_curves_join_tokens_and_compute(study):
    curves = load_curves(study.uri, "ladder", metrics=["val/loss"])
    assert curves.columns == ["run_id", "metric", "step", "value", "timestamp", "tokens", "C", "model_flops"]
    assert curves["metric"].unique().to_list() == ["val/loss"]
    small = curves.filter(pl.col("run_id") == study.ids["small"])
    assert small["step"].to_list() == [50, 100, 150, 200]
    assert small["tokens"].to_list() == [B_TOKENS * s for s in (50, 100, 150, 200)]
    assert small["C"].to_list() == [6.0 * 1e5 * B_TOKENS * s for s in (50, 100, 150, 200)], "C = 6·N·tokens"
    assert small["model_flops"].null_count() == 4, "the legacy flops metric is not model FLOPs"
    no_tokens = curves.filter(pl.col("run_id") == study.ids["summary"])
    assert no_tokens.height == 4 and no_tokens["tokens"].null_count() == 4
    failed = curves.filter(pl.col("run_id") == study.ids["failed"])
    assert math.isnan(failed["value"][-1])


def test_curves_keep_duplicate_steps_and_join_the_latest(study):
    child = load_curves(study.uri, run_ids=[study.ids["child_a"]])
    assert sorted(child["metric"].unique()) == ["flops", "lr", "tokens", "train/loss", "val/loss"]
    step10 = child.filter((pl.col("metric") == "train/loss") & (pl.col("step") == 10))
    assert step10["value"].to_list() == [train_loss(1e5, 10), 9.0]  # both rows, in timestamp order
    assert step10["tokens"].to_list() == [1.0, 1.0]  # the later tokens row at step 10
    lr = child.filter(pl.col("metric") == "lr")
    assert lr.height == STEPS and lr["step"].is_sorted()


def test_missing_store_is_an_error_and_not_created(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    for path in ("auto", "sql", "client"):
        with pytest.raises(LoadError, match="does not exist"):
            load_runs(f"sqlite:///{missing}", path=path)
    assert not missing.exists() and not missing.parent.exists()
    with pytest.raises(LoadError, match="does not exist"):
        load_curves((tmp_path / "mlruns").as_uri())
    not_mlflow = tmp_path / "other.db"
    sqlite3.connect(not_mlflow).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(LoadError, match="not an MLflow tracking store"):
        load_runs(f"sqlite:///{not_mlflow}")
    with pytest.raises(LoadError, match="sqlite:///"):
        load_runs(str(not_mlflow))  # a bare path to a database file


def test_empty_or_in_memory_uri_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MlflowClient("") would create ./mlflow.db here
    for uri in ("", "  ", "sqlite://", "sqlite:///", "sqlite:///:memory:", f"sqlite:///{tmp_path}"):
        for load in (load_runs, load_curves):
            with pytest.raises(LoadError, match="empty|names no SQLite"):
                load(uri)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arrow_min_runs", [10**9, 1], ids=["sqlite3", "adbc-child"])
def test_curves_read_in_parallel_blocks_match_between_paths(new_sqlite_store, tmp_path, monkeypatch, arrow_min_runs):
    """Blocks of runs read on parallel connections (2 runs each here), through sqlite3 or through ADBC in a child
    process; steps logged twice with equal timestamps (ties broken by value), NaN and negative steps; a metric
    selection without tokens or flops."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from analysis.load import sql

    monkeypatch.setattr(sql, "ARROW_MIN_RUNS", arrow_min_runs)
    monkeypatch.setattr(sql, "MIN_RUNS_PER_READER", 2)
    monkeypatch.setattr(sql, "READERS", 4)
    uri = new_sqlite_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("many", artifact_location=(tmp_path / "artifacts").as_uri())
    for i in range(7):
        run_id = client.create_run(experiment, run_name=f"r{i}", start_time=T0 + i).info.run_id
        metrics = [Metric(key, float(s * (i + 1)), T0 + s, s) for s in range(-1, 4) for key in ("tokens", "x")]
        metrics += [Metric("x", 7.5, T0 + 2, 2), Metric("tokens", 99.5, T0 + 2, 2), Metric("tokens", 98.5, T0 + 2, 2)]
        metrics.append(Metric("x", math.nan, T0 + 9, 9))
        if i == 6:  # steps far apart: the tokens lookup searches instead of indexing a dense table
            metrics += [Metric(key, 1.5, T0 + 10, 10**6) for key in ("x", "tokens")]
        client.log_batch(run_id, metrics=metrics)
    fast = load_curves(uri, "many", path="sql")
    assert_frame_equal(fast, load_curves(uri, "many", path="client"))
    assert fast.height == 7 * 14 + 2 and fast["run_id"].n_unique() == 7 and fast["run_id"].is_sorted()
    assert fast.filter(pl.col("step") == 10**6)["tokens"].to_list() == [1.5, 1.5]
    one = fast.filter((pl.col("run_id") == fast["run_id"][0]) & (pl.col("step") == 2))
    assert one["metric"].to_list() == ["tokens"] * 3 + ["x"] * 2
    assert one["tokens"].to_list() == [99.5] * 5  # the largest value of the latest timestamp
    x_only = load_curves(uri, "many", metrics=["x"], path="sql")
    assert_frame_equal(x_only, load_curves(uri, "many", metrics=["x"], path="client"))
    assert x_only["model_flops"].null_count() == x_only.height and x_only["tokens"].null_count() == 7
    assert x_only["C"].null_count() == x_only.height, "no N param: no C"


def reference_curves(raw: RawCurves) -> pl.DataFrame:
    """assemble_curves written plainly: a multi-column sort and joins on (run_id, step)."""
    rows = raw.rows.with_columns(run_id=pl.Series(raw.run_ids).gather(raw.rows["run"])).drop("run")
    rows = rows.sort(["run_id", "metric", "step", "timestamp", "value"])
    lookup = rows.filter(pl.col("metric").is_in(["tokens", "model_flops"])).unique(["run_id", "metric", "step"],
                                                                                  keep="last")
    rows = rows.with_columns(C=pl.lit(None, dtype=pl.Float64))  # the runs have no N param
    for key in ("tokens", "model_flops"):
        column = lookup.filter(pl.col("metric") == key).select("run_id", "step", pl.col("value").alias(key))
        rows = rows.join(column, on=["run_id", "step"], how="left", maintain_order="left")
    rows = rows.with_columns(pl.from_epoch("timestamp", time_unit="ms").dt.replace_time_zone("UTC"))
    return rows.select([pl.col(c).cast(t) for c, t in CURVE_COLUMNS.items()])


@pytest.mark.parametrize("steps", ["dense", "sparse", "beyond 2^62"])
def test_assembled_curves_match_a_plain_sort_and_join(steps):
    rng = np.random.default_rng(0)
    n, n_runs = 5000, 37
    step = {"dense": rng.integers(-3, 120, n), "sparse": rng.integers(0, 10**9, n) // 1000 * 1000,
            "beyond 2^62": rng.choice(np.array([-(2**62), 0, 5, 2**62]), n)}[steps]
    rows = pl.DataFrame({
        "run": rng.integers(0, n_runs, n).astype(np.uint32),
        "metric": rng.choice(np.array(["tokens", "model_flops", "train/loss", "val/loss", "lr"]), n),
        "step": step, "value": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 4, n) * 0.5),
        "timestamp": T0 + rng.integers(0, 3, n),  # many ties of (run, metric, step, timestamp)
    })
    raw = RawCurves([f"run-{i:03d}" for i in range(n_runs)], rows)
    assert_frame_equal(assemble_curves(raw, None), reference_curves(raw))
    picked = assemble_curves(raw, ["lr", "val/loss"])
    assert_frame_equal(picked, reference_curves(raw).filter(pl.col("metric").is_in(["lr", "val/loss"])))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip(tmp_path, suffix):
    df = pl.DataFrame({"N": [1e6, 4e6], "D": [2e7, 8e7], "loss": [3.1, 2.8], "name": ["a", "b"]})
    path = tmp_path / f"points{suffix}"
    df.write_csv(path) if suffix == ".csv" else df.write_parquet(path)
    back = load_table(path)
    assert_frame_equal(back, df.with_columns((6.0 * pl.col("N") * pl.col("D")).alias("C")))


def test_table_errors_name_the_column_and_the_fix(tmp_path):
    path = tmp_path / "points.csv"
    pl.DataFrame({"N": [1e6], "tokens": [2e7], "loss": [3.0]}).write_csv(path)
    with pytest.raises(LoadError, match=r"missing column\(s\) \['D'\].*Rename"):
        load_table(path)
    pl.DataFrame({"N": ["1e6", "lots"], "D": [2e7, 3e7], "loss": [3.0, 2.9]}).write_csv(path)
    with pytest.raises(LoadError, match=r"column 'N' must be numeric but data row 2 \(counting from 1.*holds 'lots'"):
        load_table(path)
    pl.DataFrame({"N": [1e6], "D": [2e7], "loss": [3.0], "C": [None]}).write_csv(path)
    assert load_table(path)["C"].to_list() == [6 * 1e6 * 2e7]
    with pytest.raises(LoadError, match="not found"):
        load_table(tmp_path / "absent.parquet")
    with pytest.raises(LoadError, match="unsupported table format"):
        load_table(tmp_path / "points.xlsx")


def test_postgres_store_paths_identical(postgres_url, tmp_path, monkeypatch):
    from analysis.load import sql

    monkeypatch.setattr(sql, "MIN_RUNS_PER_READER", 3)  # metric rows read on parallel connections too
    study = log_study(postgres_url, tmp_path / "artifacts")
    fast = load_runs(study.uri, path="sql")
    assert fast.height == 8
    assert_frame_equal(fast, load_runs(study.uri, path="client"))
    assert_frame_equal(load_curves(study.uri, path="sql"), load_curves(study.uri, path="client"))
    plain = "postgresql://" + postgres_url.split("://", 1)[1]  # SQLAlchemy's default spelling
    assert_frame_equal(load_runs(plain), fast)


def test_reading_a_sqlite_store_loads_no_second_sqlite_library(study):
    """ADBC's SQLite driver links its own SQLite: closing its file drops the POSIX locks MLflow's SQLite holds on the
    store in the same process, and a concurrent writer then corrupts it (it did, in lab-demo). The loader reads
    SQLite through Python's sqlite3 only; a fresh process shows which libraries the reads mapped."""
    import subprocess
    import sys

    code = ("import sys; from analysis.load import load_curves, load_runs, sql; sql.ARROW_MIN_RUNS = 1; "
            f"load_runs({study.uri!r}); load_curves({study.uri!r}); "
            "print(sorted({l.split()[-1].rsplit('/', 1)[-1] for l in open('/proc/self/maps') if 'sqlite' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert "adbc" not in out and out.count("libsqlite3") <= 1, out
