"""Tidy tables from CSV or Parquet files, for points that did not come from our MLflow store (papers, other labs).

The columns are the design §4 symbols; a loss law needs N, D and loss, and C defaults to 6·N·D.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from analysis.load.frames import LoadError
from tracking.record import Metric, Param

# Columns read as numbers when present (design §4): counts, tokens and FLOPs are Float64 because they overflow
# nothing and feed log-space fits; step stays an integer.
FLOAT_COLUMNS = ("N", "N_total", "D", "C", "B", Param.B_SEQUENCES, "lr", "loss", "tokens", Metric.MODEL_FLOPS, "value",
                 "seq_len")
INT_COLUMNS = ("step",)
SYMBOLS = "N (parameters), D (training tokens), C (training FLOPs), B (batch, tokens), lr (peak learning rate), " \
          "loss (validation nats/token)"
READERS = {".csv": pl.read_csv, ".parquet": pl.read_parquet, ".pq": pl.read_parquet}


def load_table(path: str | Path, required: Sequence[str] = ("N", "D", "loss")) -> pl.DataFrame:
    """Read a CSV or Parquet table of runs, check its columns and types, and fill C = 6·N·D where missing.

    `required` are the columns the caller's law needs (N, D, loss for a loss law); D may be given as C instead
    (D = C/(6·N)), as the README's "D (or C)" says. Known numeric columns
    (FLOAT_COLUMNS, INT_COLUMNS) are cast to Float64 / Int64, from strings too; other columns pass through.
    C (training compute, FLOPs) defaults to 6·N·D (Kaplan et al. 2020, eq. 2.1) when absent or null.
    Raises LoadError naming the file, the missing or non-numeric column and the fix.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise LoadError(f"{path}: unsupported table format {path.suffix!r}; save it as .csv or .parquet")
    if not path.is_file():
        raise LoadError(f"table file not found: {path.resolve()}; check the path")
    df = reader(path)
    # D (or C): with N, either one gives the other through C = 6·N·D
    d_from_c = "D" not in df.columns and "C" in df.columns and "N" in df.columns
    missing = [column for column in required if column not in df.columns and not (column == "D" and d_from_c)]
    if missing:
        either = " (D or C)" if "D" in missing else ""
        raise LoadError(
            f"{path}: missing column(s) {missing}{either} (has {df.columns}). Rename your columns to the "
            f"symbols {SYMBOLS}; e.g. df.rename({{'params': 'N', 'tokens': 'D'}})")
    df = df.with_columns(
        *[_numeric(df, path, column, pl.Float64) for column in FLOAT_COLUMNS if column in df.columns],
        *[_numeric(df, path, column, pl.Int64) for column in INT_COLUMNS if column in df.columns],
    )
    if d_from_c:
        df = df.with_columns(D=pl.col("C") / (6.0 * pl.col("N")))  # tracking.record.tokens_for_compute
    elif "N" in df.columns and "D" in df.columns:
        six_nd = 6.0 * pl.col("N") * pl.col("D")
        df = df.with_columns((pl.coalesce(pl.col("C"), six_nd) if "C" in df.columns else six_nd).alias("C"))
    return df


def _numeric(df: pl.DataFrame, path: Path, column: str, dtype: pl.DataType) -> pl.Series:
    series = df[column]
    if series.dtype.is_numeric() and not series.dtype == pl.Boolean:
        return series.cast(dtype)
    if series.dtype in (pl.String, pl.Null):
        cleaned = series.str.strip_chars() if series.dtype == pl.String else series
        parsed = cleaned.cast(pl.Float64, strict=False)
        bad = parsed.is_null() & series.is_not_null() & (cleaned != "")
        if not bad.any():
            return parsed.cast(dtype)
        row = int(bad.arg_true()[0])  # 0-based; a person counts data rows from 1 (the header line is not one)
        raise LoadError(f"{path}: column {column!r} must be numeric but data row {row + 1} (counting from 1 after "
                        f"the header) holds {series[row]!r}; fix or "
                        f"drop the non-numeric rows (empty cells are read as missing)")
    raise LoadError(f"{path}: column {column!r} has type {series.dtype}, expected a number; store it as a numeric "
                    f"column")
