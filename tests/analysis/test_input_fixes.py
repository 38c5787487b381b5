"""Issue 19's fixes in analysis input: a table may give C instead of D, and errors count rows from 1 and cite no
document the user does not have."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.cli import main as lab_fit
from analysis.load import load_table
from analysis.load.frames import LoadError
from analysis.validate import PointsError, check_arrays

ROOT = Path(__file__).resolve().parents[2]


def test_a_table_with_C_and_no_D_gets_D_from_C(tmp_path):
    path = tmp_path / "points.csv"
    pl.DataFrame({"N": [1e6, 2e6], "C": [6e12, 2.4e13], "loss": [3.0, 2.8]}).write_csv(path)
    df = load_table(path, required=("N", "D", "loss"))
    assert df["D"].to_list() == pytest.approx([1e6, 2e6])


def test_a_table_with_neither_D_nor_C_names_both(tmp_path):
    path = tmp_path / "points.csv"
    pl.DataFrame({"N": [1e6], "loss": [3.0]}).write_csv(path)
    with pytest.raises(LoadError, match=r"\['D'\] \(D or C\)") as err:
        load_table(path, required=("N", "D", "loss"))
    assert "design §" not in str(err.value)


def test_lab_fit_loss_takes_the_chinchilla_points_without_their_D_column(tmp_path, capsys):
    path = tmp_path / "no_d.csv"
    pl.read_csv(ROOT / "tests/data/chinchilla_points.csv").drop("D").write_csv(path)
    assert lab_fit(["loss", "--input", str(path), "--bootstrap", "0", "-q"]) == 0
    out = capsys.readouterr().out
    alpha = float(re.search(r"^alpha\s+(\S+)", out, re.M).group(1))
    assert 0.25 < alpha < 0.45


def test_a_non_numeric_cell_is_cited_by_its_row_counted_from_1(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss\n1e6,2e7,3.0\n2e6,oops,2.9\n")
    with pytest.raises(LoadError, match=r"data row 2 \(counting from 1"):
        load_table(path)


def test_fit_errors_count_rows_from_1():
    with pytest.raises(PointsError, match=r"rows 1, 3 counting from 1"):
        check_arrays({"N": np.array([-1.0, 2.0, 0.0])})
    with pytest.raises(PointsError, match=r"rows 2, counting from 1"):
        check_arrays({"loss": np.array([1.0, np.nan])})


def test_no_user_message_cites_the_internal_design_document():
    """Docstrings and comments may point developers at the design; strings a user reads may not."""
    offenders = []
    for package in ("analysis", "lab", "sweeps"):
        for path in (ROOT / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if "design §" in code and re.search(r"""(raise|f?["']).*design §""", code) \
                        and not line.strip().startswith(('"""', "Symbols", "Conventions")):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, offenders
