"""Store-independent half of the loader: raw tables in, tidy frames out.

Both readers (``sql.py`` reading MLflow's tables, ``client.py`` going through ``MlflowClient``) hand over the same
raw tables (``RawRuns``, and ``RawCurves`` per block of runs; schemas below); everything a user sees is built here
from them, once, so the two paths cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl

from tracking.record import Artifact, Metric, Param, Tag, compute


class LoadError(ValueError):
    """A store, experiment, run or table cannot be loaded as asked; the message says why and how to fix it."""


# Metric names written by the training side (design §5).
VAL_LOSS, TRAIN_LOSS, TOKENS, MODEL_FLOPS = Metric.VAL_LOSS, Metric.TRAIN_LOSS, Metric.TOKENS, Metric.MODEL_FLOPS
FINAL_KEYS = (VAL_LOSS, TRAIN_LOSS, TOKENS, MODEL_FLOPS)

# Tags that get a bare column; every other user tag becomes ``tag.<key>``. MLflow's own ``mlflow.*`` tags
# (user, source, run name, ...) are dropped, except the parent run id of nested runs.
NAMED_TAGS = {
    Tag.SWEEP: "sweep",
    Tag.DESIGN: "design",
    Tag.PARENT_RUN: "parent_run_id",
    Tag.STATUS_REASON: Tag.STATUS_REASON,
    Tag.STATUS_KIND: Tag.STATUS_KIND,
    Tag.GIT_COMMIT: Tag.GIT_COMMIT,
    Tag.GIT_DIRTY: Tag.GIT_DIRTY,
}
# Numeric run columns taken from params (design §4/§5): column -> param keys tried in order.
PARAM_COLUMNS = {
    "N": (Param.N,),  # non-embedding parameters
    "N_total": (Param.N_TOTAL,),
    "B": (Param.B_TOKENS,),  # global batch, tokens
    Param.B_SEQUENCES: (Param.B_SEQUENCES,),
    "lr": (Param.LR,),  # peak learning rate
    "seq_len": (Param.SEQ_LEN, "model.seq_len"),
    "C_param": (Param.C,),
}
# Param strings that mean "no value" (Hydra's None, JSON null); they become null when a column is numeric.
NULL_STRINGS = ("None", "null", "none", "")

# Raw schemas the readers must produce. Times are epoch milliseconds, as MLflow stores them.
RAW_RUNS = {
    "run_id": pl.String, "run_name": pl.String, "experiment_id": pl.String, "experiment": pl.String,
    "status": pl.String, "start_time": pl.Int64, "end_time": pl.Int64, "artifact_uri": pl.String,
}
RAW_KV = {"run_id": pl.String, "key": pl.String, "value": pl.String}
# MLflow's "latest" value of each FINAL_KEYS metric (highest step, then timestamp, then value); `step` is read only
# for train/loss, so a reader may leave it null for the other keys.
RAW_LATEST = {"run_id": pl.String, "key": pl.String, "value": pl.Float64, "step": pl.Int64}
RAW_BEST = {"run_id": pl.String, "best_val_loss": pl.Float64}
# Metric rows name their run by a code: the index of its id in RawCurves.run_ids (sorted), so that sorting and
# joining 10^6-10^7 rows works on integers and the 32-character ids are written once per row only at the end.
RAW_CURVES = {"run": pl.UInt32, "metric": pl.String, "step": pl.Int64, "value": pl.Float64, "timestamp": pl.Int64}

RUN_COLUMNS = {
    "run_id": pl.String, "run_name": pl.String, "experiment_id": pl.String, "experiment": pl.String,
    "status": pl.String,
    "start_time": pl.Datetime("ms", "UTC"), "end_time": pl.Datetime("ms", "UTC"),
    **{column: pl.String for column in NAMED_TAGS.values()},
    "N": pl.Float64, "N_total": pl.Float64, "D": pl.Float64, "C": pl.Float64, MODEL_FLOPS: pl.Float64,
    "B": pl.Float64,
    Param.B_SEQUENCES: pl.Float64, "lr": pl.Float64, "seq_len": pl.Float64,
    "loss": pl.Float64, "final_val_loss": pl.Float64, "best_val_loss": pl.Float64, "final_train_loss": pl.Float64,
    "steps": pl.Int64,
}
CURVE_COLUMNS = {
    "run_id": pl.String, "metric": pl.String, "step": pl.Int64, "value": pl.Float64,
    "timestamp": pl.Datetime("ms", "UTC"), "tokens": pl.Float64, "C": pl.Float64, MODEL_FLOPS: pl.Float64,
}


@dataclass(frozen=True)
class RawRuns:
    """What a reader returns for `load_runs`: active runs of the selected experiments, in the RAW_* schemas."""

    runs: pl.DataFrame
    tags: pl.DataFrame
    params: pl.DataFrame
    latest: pl.DataFrame
    best: pl.DataFrame


@dataclass(frozen=True)
class RawCurves:
    """What a reader returns for `load_curves`: metric rows (RAW_CURVES, any order) and the run ids their `run`
    codes index, sorted (code i is the i-th smallest id, so code order is run_id order), with each run's N param
    (its string, None when missing) for C = 6·N·tokens."""

    run_ids: list[str]
    rows: pl.DataFrame
    N: Sequence[str | None] = ()


def empty(schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=dict(schema))


def conform(df: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast a reader's frame to a raw schema (drivers differ in int widths and booleans)."""
    return df.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def select_experiments(active: pl.DataFrame, wanted: Sequence[str] | None) -> list[str]:
    """Experiment ids for the requested names (all active experiments for None); unknown names are an error.

    `active` has columns experiment_id, name (active experiments only).
    """
    if wanted is None:
        return sorted(active["experiment_id"].to_list())
    known = dict(zip(active["name"].to_list(), active["experiment_id"].to_list()))
    missing = [name for name in wanted if name not in known]
    if missing:
        raise LoadError(
            f"experiment(s) {missing} not found among the active experiments of the store "
            f"(available: {sorted(known)}); pass one of those names, or experiment=None for all")
    return [known[name] for name in wanted]


def check_run_ids(runs: pl.DataFrame, run_ids: Sequence[str] | None) -> None:
    """Every requested run id must be an active run of the selected experiments."""
    if run_ids is None:
        return
    missing = sorted(set(run_ids) - set(runs["run_id"].to_list()))
    if missing:
        raise LoadError(
            f"run id(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} are not active runs of the selected "
            "experiments (deleted, misspelt, or in another experiment); check them with load_runs()")


def normalise_experiments(experiment: str | Sequence[str] | None) -> list[str] | None:
    if experiment is None:
        return None
    if isinstance(experiment, str):
        return [experiment]
    names = list(experiment)
    if not all(isinstance(name, str) for name in names):
        raise LoadError(f"experiment must be a name, a list of names or None, got {experiment!r}")
    return names


def _epoch_ms(column: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="ms").dt.replace_time_zone("UTC")


def _numeric_or_string(column: pl.Series) -> pl.Series:
    """Float64 when every value that is not a null string parses as a number, otherwise the strings unchanged."""
    values = column.filter(column.is_not_null() & ~column.is_in(NULL_STRINGS))
    parsed = values.str.strip_chars().cast(pl.Float64, strict=False)
    if values.len() == 0 or parsed.null_count() > 0:
        return column
    # Every other value parses, so the lenient cast turns exactly the null strings into nulls.
    return column.str.strip_chars().cast(pl.Float64, strict=False)


def _wide(long: pl.DataFrame, run_ids: pl.Series, rename: Mapping[str, str]) -> pl.DataFrame:
    """One row per run, one String column per key (renamed), from a (run_id, key, value) frame."""
    base = pl.DataFrame({"run_id": run_ids})
    long = long.filter(pl.col("key").is_in(list(rename)))
    if long.height == 0:
        return base
    wide = long.pivot(on="key", index="run_id", values="value")
    wide = wide.rename({key: rename[key] for key in wide.columns if key != "run_id"})
    # Columns in the order of `rename`, not of first appearance, which differs between readers.
    return base.join(wide, on="run_id", how="left").select("run_id", *[c for c in rename.values()
                                                                         if c in wide.columns])


def _summary(artifact_uri: str | None) -> dict:
    """The run's summary.json (design §5) when its artifacts are on a local path; {} otherwise.

    Only read for runs whose metrics or params lack a value (a run that never logged `tokens`, say), so loading a
    healthy store touches no artifact. Remote artifact stores (s3:, mlflow-artifacts:) are not fetched.
    """
    if not artifact_uri:
        return {}
    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return {}
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else artifact_uri) / Artifact.SUMMARY
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{path} is not valid JSON ({err}); fix or delete that summary artifact") from err
    return summary if isinstance(summary, dict) else {}


def _fill_from_summaries(df: pl.DataFrame, artifact_uris: pl.Series) -> pl.DataFrame:
    """Fill N, N_total, D, final_val_loss from summary.json where the store left them null."""
    columns = ["N", "N_total", "D", "final_val_loss"]
    lacking = df.select(pl.any_horizontal(pl.col(columns).is_null())).to_series()
    if not lacking.any():
        return df
    fill: dict[str, list[float | None]] = {column: [] for column in columns}
    for row, uri in zip(lacking.to_list(), artifact_uris.to_list()):
        summary = _summary(uri) if row else {}
        for column in columns:
            value = summary.get(column)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            fill[column].append(float(value) if ok else None)
    return df.with_columns(pl.coalesce(pl.col(c), pl.Series(values=fill[c], dtype=pl.Float64)).alias(c)
                           for c in columns)


def assemble_runs(raw: RawRuns, filter_tags: Mapping[str, object] | None) -> pl.DataFrame:
    """The tidy runs frame (schema in ``analysis.load``'s docstring) from a reader's raw tables."""
    runs = raw.runs
    for key, value in (filter_tags or {}).items():
        match = raw.tags.filter((pl.col("key") == key) & (pl.col("value") == str(value)))["run_id"]
        runs = runs.filter(pl.col("run_id").is_in(match.implode()))
    ids = runs["run_id"]
    selected = pl.col("run_id").is_in(ids.implode())
    tags, params = raw.tags.filter(selected), raw.params.filter(selected)

    named = _wide(tags, ids, NAMED_TAGS)
    user_tags = sorted(set(tags["key"].to_list()) - set(NAMED_TAGS))
    user_tags = [key for key in user_tags if not key.startswith("mlflow.")]
    extra_tags = _wide(tags, ids, {key: f"tag.{key}" for key in user_tags})
    params = _wide(params, ids, {key: f"param.{key}" for key in sorted(set(params["key"].to_list()))})
    params = params.with_columns(_numeric_or_string(params[c]) for c in params.columns if c != "run_id")

    latest = raw.latest.filter(selected)
    final = {key: latest.filter(pl.col("key") == key).select("run_id", pl.col("value").alias(key), "step")
             for key in FINAL_KEYS}
    df = (runs.join(named, on="run_id", how="left")
          .join(final[VAL_LOSS].drop("step"), on="run_id", how="left")
          .join(final[TRAIN_LOSS].rename({"step": "steps"}), on="run_id", how="left")
          .join(final[TOKENS].drop("step"), on="run_id", how="left")
          .join(final[MODEL_FLOPS].drop("step"), on="run_id", how="left")
          .join(raw.best, on="run_id", how="left")
          .join(params, on="run_id", how="left")
          .join(extra_tags, on="run_id", how="left"))

    def param(keys: Sequence[str]) -> pl.Expr:
        present = [pl.col(f"param.{k}") for k in keys if f"param.{k}" in df.columns]
        if not present:
            return pl.lit(None, dtype=pl.Float64)
        return pl.coalesce([p.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False) for p in present])

    df = df.with_columns(
        *(pl.col(c) if c in df.columns else pl.lit(None, dtype=pl.String).alias(c) for c in NAMED_TAGS.values()),
        *(param(keys).alias(column) for column, keys in PARAM_COLUMNS.items()),
        pl.col(TOKENS).alias("D"),
        pl.col(MODEL_FLOPS),
        pl.col(VAL_LOSS).alias("final_val_loss"),
        pl.col(TRAIN_LOSS).alias("final_train_loss"),
    )
    df = _fill_from_summaries(df, df["artifact_uri"])
    # C is 6·N·D (tracking.record.compute) from the N param and the tokens seen; the C param (the same number for
    # a finished run) stands in when N or D is missing. Stores before the record's vocabulary logged a `flops`
    # metric of 6·N + attention per token: it is not C and is not read.
    df = df.with_columns(
        pl.coalesce(compute(pl.col("N"), pl.col("D")), pl.col("C_param")).alias("C"),
        pl.col("final_val_loss").alias("loss"),
        _epoch_ms("start_time").alias("start_time"),
        _epoch_ms("end_time").alias("end_time"),
    )
    extra = [c for c in extra_tags.columns if c != "run_id"] + [c for c in params.columns if c != "run_id"]
    df = df.select(*[pl.col(c).cast(t) for c, t in RUN_COLUMNS.items()], *extra)
    return df.sort(["experiment", "start_time", "run_id"], nulls_last=True)


@dataclass(frozen=True)
class _Packing:
    """Bit fields of one Int64 sort key per metric row: run code, metric code, step offset (high to low bits).

    One integer sort and integer lookups replace multi-column sorts and joins on strings: ~5x less CPU on 3M rows.
    """

    metric_bits: int
    step_bits: int
    step_min: int
    dense_steps: bool  # steps too spread to fit (2^40+ apart) are replaced by their dense rank, keeping the order

    @staticmethod
    def of(rows: pl.DataFrame, n_metrics: int) -> _Packing:
        step_min, step_max = int(rows["step"].min()), int(rows["step"].max())
        metric_bits, run_bits = (n_metrics - 1).bit_length(), int(rows["run"].max()).bit_length()
        step_bits = (step_max - step_min).bit_length()
        if run_bits + metric_bits + step_bits <= 62:
            return _Packing(metric_bits, step_bits, step_min, False)
        return _Packing(metric_bits, rows.height.bit_length(), 0, True)

    # Non-negative Int64 fields: multiplication, floor division and remainder by powers of two are bit shifts.
    def key(self, metric_code: pl.Expr) -> pl.Expr:
        offset = (pl.col("step").rank("dense").cast(pl.Int64) - 1 if self.dense_steps
                  else pl.col("step") - self.step_min)
        return ((pl.col("run").cast(pl.Int64) * (1 << self.metric_bits) + metric_code) * (1 << self.step_bits)
                + offset)

    def run(self) -> pl.Expr:
        return pl.col("key") // (1 << (self.metric_bits + self.step_bits))

    def metric(self) -> pl.Expr:
        return pl.col("key") // (1 << self.step_bits) % (1 << self.metric_bits)

    def at(self) -> pl.Expr:
        """One integer per (run, step), increasing with both."""
        return self.run() * (1 << self.step_bits) + pl.col("key") % (1 << self.step_bits)


def _lookup(rows: pl.DataFrame, chosen: pl.Series, runs: int, step_bits: int) -> pl.Series:
    """The value of the chosen rows (one per (run, step), increasing `at`) at each row's (run, step); null where
    none. A dense table indexed by `at` when it is small (the usual case: every step logged), else a binary search.
    """
    at, values = rows["at"].filter(chosen), rows["value"].filter(chosen)
    if at.len() == 0:
        return pl.Series(values=[None] * rows.height, dtype=pl.Float64)
    size = runs << step_bits
    if size <= 4 * rows.height:
        table = np.zeros(size)
        present = np.zeros(size, dtype=bool)
        table[at.to_numpy()], present[at.to_numpy()] = values.to_numpy(), True
        index = rows["at"].to_numpy()
        found = pl.Series(values=present[index])
        return pl.Series(values=table[index]).zip_with(found, pl.Series(values=[None], dtype=pl.Float64)
                                                      .new_from_index(0, rows.height))
    index = at.search_sorted(rows["at"], side="left").clip(0, at.len() - 1)
    found = at.gather(index) == rows["at"]
    return values.gather(index).zip_with(found, pl.Series(values=[None], dtype=pl.Float64).new_from_index(
        0, rows.height))


def assemble_curves(raw: RawCurves, metrics: Sequence[str] | None) -> pl.DataFrame:
    """The tidy curves frame: every recorded row, with tokens, C = 6·N·tokens and model FLOPs at the same
    (run_id, step) joined on.

    Duplicate (run, metric, step) rows (a metric logged twice) are all kept; for the tokens / model_flops lookup the
    row with the latest timestamp (then the larger value) wins, so the join never multiplies rows.
    """
    rows = conform(raw.rows, RAW_CURVES)
    if rows.height == 0:
        return empty(CURVE_COLUMNS)
    names = sorted(rows["metric"].unique().to_list())
    packing = _Packing.of(rows, len(names))
    code = pl.col("metric").cast(pl.Enum(names)).to_physical().cast(pl.Int64)
    rows = rows.select(packing.key(code).alias("key"), "step", "value", "timestamp")
    if not rows["key"].is_sorted():
        rows = rows[rows["key"].arg_sort()]
    if (rows["key"].diff() == 0).any():  # a step logged twice: order its rows by timestamp, then value
        rows = rows.sort(["key", "timestamp", "value"])
    rows = rows.with_columns(packing.run().alias("run"), packing.metric().alias("metric"), packing.at().alias("at"))
    # Sorted, so the last row of each (run, metric, step) group is the latest timestamp, then the larger value.
    last = (rows["key"] != rows["key"].shift(-1)).fill_null(True)
    lookups = {}
    for key in (TOKENS, MODEL_FLOPS):
        chosen = (rows["metric"] == names.index(key)) & last if key in names else None
        lookups[key] = (_lookup(rows, chosen, len(raw.run_ids), packing.step_bits) if chosen is not None
                        else pl.Series(values=[None] * rows.height, dtype=pl.Float64))
    curves = pl.DataFrame({
        "run_id": pl.Series(values=raw.run_ids, dtype=pl.String).gather(rows["run"]),
        "metric": pl.Series(values=names, dtype=pl.String).gather(rows["metric"]),
        "step": rows["step"], "value": rows["value"], "timestamp": rows["timestamp"], **lookups,
    })
    sizes = pl.Series(values=list(raw.N) or [None] * len(raw.run_ids), dtype=pl.String)
    sizes = sizes.str.strip_chars().cast(pl.Float64, strict=False)
    curves = curves.with_columns(C=compute(sizes.gather(rows["run"]), pl.col(TOKENS)))
    if metrics is not None:
        curves = curves.filter(pl.col("metric").is_in(list(metrics)))
    curves = curves.with_columns(_epoch_ms("timestamp").alias("timestamp"))
    return curves.select([pl.col(c).cast(t) for c, t in CURVE_COLUMNS.items()])
