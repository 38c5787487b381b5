"""Property tests over analysis inputs: tables with NaN, infinities, zeros, negatives, missing columns or too few
rows either fit to finite numbers or fail with a clear error naming the column or the count, through the API and
through `lab-fit` (exit status 2, one `error:` line, no output file)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.cli import main as lab_fit
from analysis.laws import fit_loss
from analysis.laws.cbs import local_cbs
from analysis.laws.hparams import fit_hparams
from analysis.laws.isoflop import fit_isoflop

BAD_VALUES = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0]


@st.composite
def law_points(draw, columns: tuple[str, ...] = ("N", "D", "loss")):
    """Points of a Chinchilla-like law, some cells corrupted, some columns possibly dropped: (frame, the columns
    still in the frame that hold a bad value, the dropped column or None)."""
    n = draw(st.integers(0, 14))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    N = 10 ** rng.uniform(5, 8, n)
    D = 10 ** rng.uniform(7, 10, n)
    data = {"N": N, "D": D, "loss": 1.7 + 400 / N**0.34 + 400 / D**0.28, "C": 6 * N * D}
    data = {k: data[k].copy() for k in columns}
    corrupt = draw(st.lists(st.tuples(st.sampled_from(columns), st.integers(0, max(n - 1, 0)),
                                      st.sampled_from(BAD_VALUES)), max_size=3)) if n else []
    for col, row, value in corrupt:
        data[col][row] = value
    dropped = draw(st.sampled_from([None, *columns])) if draw(st.booleans()) and draw(st.booleans()) else None
    bad = {col for col, _, _ in corrupt} - {dropped}
    return pl.DataFrame({k: v for k, v in data.items() if k != dropped}), bad, dropped


def assert_clear(message: str, bad: set[str], missing: str | None, few: tuple[str, ...] = ("points",)) -> None:
    """A clear error names what is wrong: the missing column, else a column holding a bad value (quoted, as
    analysis.validate writes it), else, for clean data, the count that is too small (one of the words in `few`)."""
    if missing is not None:
        assert repr(missing) in message, f"missing column {missing!r} not named: {message}"
    elif bad:
        assert any(repr(c) in message for c in bad), f"none of the bad columns {sorted(bad)} named: {message}"
    else:
        assert any(word in message for word in few), f"clean data rejected without naming a count: {message}"


PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPS
@given(case=law_points())
def test_loss_fit_is_finite_or_a_clear_error(case):
    df, bad, dropped = case
    # Without D, the form that needs only N: a bad N or loss must still be refused.
    form, needed = ("L(N)", {"N", "loss"}) if dropped == "D" else ("kaplan", {"N", "D", "loss"})
    missing = dropped if dropped in needed else None
    try:
        fit = fit_loss(df, form=form, bootstrap=0)
    except ValueError as err:
        assert_clear(str(err), bad & needed, missing)
        assert bad or missing or df.height < 8, f"clean, complete points were rejected: {err}"
    else:
        assert not bad and missing is None, f"fitted through bad columns {sorted(bad)} / missing {missing}"
        assert all(math.isfinite(v) for v in fit.params.values())


@PROPS
@given(case=law_points(("N", "D", "loss", "C")))
def test_isoflop_fit_is_finite_or_a_clear_error(case):
    df, bad, dropped = case
    # A dropped D or C is derived from the other two (C = 6·N·D), and inherits their bad values.
    derived = {"D": {"N", "C"}, "C": {"N", "D"}}.get(dropped, set())
    if bad & derived:
        bad = bad | {dropped}
    missing = dropped if dropped in ("N", "loss") else None
    try:
        result = fit_isoflop(df, bootstrap=20)
    except ValueError as err:
        assert_clear(str(err), bad, missing, few=("points", "budget"))
    else:
        assert not bad and missing is None
        assert all(np.isfinite(result.budgets["N_opt"].to_numpy()))


@PROPS
@given(n_cells=st.integers(0, 5), corrupt=st.sampled_from([None, *BAD_VALUES]),
       column=st.sampled_from(["lr", "B", "loss"]))
def test_hparams_fit_is_finite_or_a_clear_error(n_cells, corrupt, column):
    rows = []
    for i in range(n_cells):
        N, D = 1e6 * 3 ** (i % 3), 2e8 * 2**i  # N and D not collinear: lr* depends on both
        for lr in (1e-3, 3e-3, 1e-2):
            for B in (2**15, 2**16, 2**17):
                loss = 3 + (math.log(lr / 3e-3)) ** 2 + (math.log(B / 2**16)) ** 2 / 4 - 0.1 * i
                rows.append({"N": N, "D": D, "lr": lr, "B": float(B), "loss": loss})
    df = pl.DataFrame(rows, schema={"N": pl.Float64, "D": pl.Float64, "lr": pl.Float64, "B": pl.Float64,
                                    "loss": pl.Float64})
    corrupted = corrupt is not None and df.height > 0
    if corrupted:
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(corrupt).otherwise(pl.col(column))
                             .alias(column))
    try:
        result = fit_hparams(df, method="convex", bootstrap=20)
    except ValueError as err:
        assert_clear(str(err), {column} if corrupted else set(), None, few=("points", "cells"))
        assert corrupted or n_cells < 4, f"a clean 4-cell landscape was rejected: {err}"
    else:
        assert not corrupted
        assert all(math.isfinite(v) for v in result.lr.params.values())


@PROPS
@given(values=st.lists(st.tuples(st.sampled_from([1e5, 2e5, 4e5]), st.sampled_from([256.0, 512.0, 1024.0, 0.0, -8.0]),
                                 st.sampled_from([3.0, 3.1, 3.4, float("nan")])), max_size=12))
def test_local_cbs_is_finite_or_a_clear_error(values):
    df = pl.DataFrame(values, schema={"checkpoint_tokens": pl.Float64, "B": pl.Float64, "loss": pl.Float64},
                      orient="row")
    bad = ({"B"} if any(b <= 0 for _, b, _ in values) else set()) | \
        ({"loss"} if any(math.isnan(loss) for _, _, loss in values) else set())
    clean = not bad
    try:
        local = local_cbs(df)
    except ValueError as err:
        assert_clear(str(err), bad, None)
    else:
        assert clean
        assert set(local["checkpoint_tokens"].to_list()) <= {1e5, 2e5, 4e5}


@settings(max_examples=15, deadline=None)
@given(case=law_points())
def test_lab_fit_exits_2_with_one_error_line_and_writes_nothing(tmp_path_factory, case):
    df, bad, dropped = case
    if not (bad or dropped or df.height < 3):
        return  # a valid table: covered by tests/analysis/test_cli.py
    work = tmp_path_factory.mktemp("cli")
    table, out = work / "runs.csv", work / "fit.json"
    df.write_csv(table)
    status = lab_fit(["loss", "--input", str(table), "--form", "kaplan", "--bootstrap", "0", "--out", str(out),
                      "--quiet"])
    assert status == 2
    assert not out.exists()


def test_lab_fit_error_is_one_line_naming_the_column(tmp_path, capsys):
    table = tmp_path / "runs.csv"
    pl.DataFrame({"N": [1e6, 2e6, -3e6, 4e6, 5e6, 6e6], "D": [1e8] * 6, "loss": [3.0] * 6}).write_csv(table)
    assert lab_fit(["loss", "--input", str(table), "--bootstrap", "0", "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "'N'" in err[-1] and "negative" in err[-1]
    assert not (tmp_path / "f.json").exists()
    json.dumps(err)  # plain text, printable
