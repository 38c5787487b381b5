"""Input checks for fits: every law works in log space, so points must be finite, positive and numerous enough.

Errors name the column, how many rows are bad (and which, up to a few), and the fix (design §8).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import polars as pl


class PointsError(ValueError):
    """The points handed to a fit cannot be fitted as they are."""


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    """Row numbers counted from 1 (the first point is row 1), as a person reading the table counts them."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i + 1) for i in idx[:limit])
    return shown + (", ..." if idx.size > limit else "")


def check_arrays(columns: Mapping[str, np.ndarray], min_points: int = 1, n_params: int | None = None) -> None:
    """Raise PointsError for NaN/inf, non-positive values or fewer than `min_points` rows in any named array.

    n_params, when given, is quoted in the too-few-points message (a law with k parameters needs > k points).
    """
    n_rows = None
    for name, values in columns.items():
        v = np.asarray(values, dtype=float)
        if n_rows is not None and v.size != n_rows:
            raise PointsError(f"column {name!r} has {v.size} rows but the others have {n_rows}; "
                              "pass equal-length arrays")
        n_rows = v.size
        bad = ~np.isfinite(v)
        if bad.any():
            raise PointsError(
                f"column {name!r}: {int(bad.sum())} of {v.size} rows are NaN or infinite (rows {_rows(bad)}, "
                f"counting from 1); drop or fill those rows before fitting "
                f"(e.g. df.drop_nans({name!r}).drop_nulls({name!r}))")
        bad = v <= 0
        if bad.any():
            raise PointsError(
                f"column {name!r}: {int(bad.sum())} of {v.size} rows are zero or negative (rows {_rows(bad)} "
                f"counting from 1, e.g. {v[bad][0]:g}); laws are fitted in log space, so keep only rows with "
                f"{name} > 0")
    n_rows = n_rows or 0
    if n_rows < min_points:
        why = f" for a law with {n_params} parameters" if n_params is not None else ""
        raise PointsError(
            f"only {n_rows} points given, but at least {min_points} are needed{why}; "
            "add runs (more sizes or budgets) or fit a form with fewer parameters")


def check_points(df: pl.DataFrame, columns: Sequence[str], min_points: int = 1,
                 n_params: int | None = None) -> None:
    """Raise PointsError (a ValueError) if a column is missing, has nulls/NaN/inf or non-positive values,
    or if the frame has fewer than `min_points` rows."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PointsError(
            f"columns {missing} are missing from the frame (it has {df.columns}); tidy frames use N, D, C, loss; "
            "derive C = 6·N·D or D = C/(6·N) if one of them is absent")
    for c in columns:
        nulls = df[c].null_count()
        if nulls:
            raise PointsError(
                f"column {c!r}: {nulls} of {df.height} rows are null; drop them first (df.drop_nulls({c!r}))")
    check_arrays({c: df[c].cast(pl.Float64).to_numpy() for c in columns}, min_points, n_params)
