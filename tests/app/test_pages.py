"""Every dashboard page under Streamlit's AppTest, against a store written by real lab-train runs (conftest).

Each test opens the app at Home.py, switches to a page as a user would, and asserts on what the page shows:
the fitted numbers (recomputed here through the public analysis API with the page's settings), figures whose
data match the store, and figures that change when a widget changes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from analysis.laws import fit_loss
from analysis.laws.cbs import fit_cbs_curve, local_cbs
from analysis.laws.hparams import fit_hparams, predict_hparams
from analysis.laws.isoflop import fit_isoflop
from analysis.load import load_curves, load_runs, load_table
from app import export
from app.ui import fmt

ROOT = Path(__file__).resolve().parents[2]
CHINCHILLA = ROOT / "tests" / "data" / "chinchilla_points.csv"


def open_page(uri: str, page: str | None, monkeypatch) -> AppTest:
    monkeypatch.setenv("LAB_TRACKING_URI", uri)
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=240).run()
    if page:
        at.switch_page(f"pages/{page}").run()
    return checked(at)


def checked(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def figure(at: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart with this key, its typed arrays decoded to lists."""
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert charts, f"no chart {key!r} on the page"
    return json.loads(charts[0].proto.spec, object_hook=decode_typed_array)


def decode_typed_array(obj: dict):
    """plotly writes numpy arrays as {"dtype": "f8", "bdata": base64}; give them back as lists."""
    if set(obj) >= {"dtype", "bdata"}:
        values = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        if "shape" in obj:  # "9, 2"
            values = values.reshape([int(n) for n in str(obj["shape"]).split(",")])
        return values.tolist()
    return obj


def shown(at: AppTest) -> str:
    """All text of the page: markdown, captions, metrics, warnings."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(parts)


def final_points(uri: str) -> pl.DataFrame:
    runs = load_runs(uri)
    return runs.filter(pl.col("status") == "FINISHED").select("run_id", "run_name", "N", "D", "C", "B", "lr", "loss")


def test_home_summarises_the_store(store_uri, monkeypatch):
    at = open_page(store_uri, None, monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Runs": "10", "Finished": "9", "Experiments": "1", "Sweeps": "3"}


def test_runs_page_curves_come_from_the_store_and_follow_the_widgets(store_uri, monkeypatch):
    at = open_page(store_uri, "1_Runs.py", monkeypatch)
    assert at.dataframe[0].value.shape[0] == 10
    picked = at.multiselect(key="runs_picked").value
    assert len(picked) == 5  # the five most recent finished runs, curves loaded for them only
    fig = figure(at, "runs_curves")
    assert len(fig["data"]) == 5 and "tokens" in fig["layout"]["xaxis"]["title"]["text"]
    val = load_curves(store_uri, run_ids=picked, metrics=["val/loss"])
    run_names = dict(load_runs(store_uri).select("run_id", "run_name").iter_rows())
    for trace in fig["data"]:
        run_id = next(r for r in picked if run_names[r] == trace["name"])
        mine = val.filter(pl.col("run_id") == run_id).sort("step")
        np.testing.assert_allclose(trace["y"], mine["value"].to_numpy())
        np.testing.assert_allclose(trace["x"], mine["tokens"].to_numpy())

    at.selectbox(key="runs_metric").select("train/loss").run()
    at.radio(key="runs_x").set_value("step").run()
    fig2 = figure(checked(at), "runs_curves")
    assert fig2["layout"]["title"]["text"].startswith("train/loss")
    assert "steps" in fig2["layout"]["xaxis"]["title"]["text"]
    assert max(len(t["x"]) for t in fig2["data"]) == 40  # train/loss at every step of the longest picked run

    at.multiselect(key="_filter_status").set_value(["FAILED"]).run()
    table = checked(at).dataframe[0].value
    assert list(table["status"]) == ["FAILED"] and list(table["sweep"]) == ["diverged"]


def test_loss_law_page_shows_the_fit_and_reacts_to_form_and_points(store_uri, monkeypatch):
    at = open_page(store_uri, "2_Loss_laws.py", monkeypatch)
    points = final_points(store_uri)
    expected = fit_loss(points, form="chinchilla", bootstrap=200)
    text = shown(at)
    for name in ("E", "alpha", "beta"):
        assert f"**{name}** = {fmt(expected.params[name])}" in text
    assert "9 points from 9 runs" in text
    # 10 runs but 9 finished and at two token budgets: no budget has three sizes, and the page says why
    assert "No IsoFLOP fit" in text and "no budget has >= 3 runs" in text
    before = figure(at, "loss_points")
    assert len(before["data"][0]["x"]) == 9

    at.selectbox(key="loss_form").select("L(N)").run()
    expected_n = fit_loss(points, form="L(N)", bootstrap=200)
    assert f"**alpha** = {fmt(expected_n.params['alpha'])}" in shown(checked(at))
    after = figure(at, "loss_points")
    assert after["layout"]["title"]["text"] == "Loss against N: L(N)" != before["layout"]["title"]["text"]

    at.radio(key="loss_mode").set_value("every validation point").run()
    n_val = load_curves(store_uri, metrics=["val/loss"]).join(points.select("run_id"), on="run_id").height
    assert f"{n_val} points from 9 runs" in shown(checked(at))
    assert len(figure(at, "loss_points")["data"][0]["x"]) == n_val
    held_out = {m.label: m.value for m in at.metric}
    assert int(held_out["Held-out runs"]) > 0 and held_out["Mean |relative error|"].endswith("%")


def test_loss_law_page_on_a_table_gives_isoflop_minima_and_frontier(store_uri, monkeypatch):
    at = open_page(store_uri, "2_Loss_laws.py", monkeypatch)
    at.radio(key="loss_source").set_value("a CSV/Parquet table").run()
    at.text_input(key="loss_path").input(str(CHINCHILLA)).run()
    at.number_input(key="loss_bootstrap").set_value(50).run()
    at.select_slider(key="iso_tol").set_value(0.15).run()
    iso = fit_isoflop(load_table(CHINCHILLA), bootstrap=50, rel_tol=0.15)
    text = shown(checked(at))
    assert f"**exp** = {fmt(iso.N_law.params['exp'])}" in text
    frontier = figure(at, "iso_frontier")
    profiles = figure(at, "iso_profiles")
    stars = [t for t in profiles["data"] if t.get("name", "").startswith("minimum")]
    assert len(stars[0]["x"]) == int((iso.budgets["convex"] & iso.budgets["in_range"]).sum())
    target_before = [t for t in frontier["data"] if t.get("name") == "target N*"][0]["x"]
    at.number_input(key="iso_target").set_value(1e24).run()
    target_after = [t for t in figure(checked(at), "iso_frontier")["data"] if t.get("name") == "target N*"][0]["x"]
    assert target_after == [1e24] != target_before


def test_hyperparameter_page_fits_lr_and_batch_laws_and_answers_the_calculator(store_uri, monkeypatch):
    at = open_page(store_uri, "3_Hyperparameters.py", monkeypatch)
    points = final_points(store_uri)
    expected = fit_hparams(points, bootstrap=200)
    text = shown(at)
    assert f"**exp_N** = {fmt(expected.lr.params['exp_N'])}" in text
    assert f"**exp_D** = {fmt(expected.lr.params['exp_D'])}" in text
    # the heatmap opens on the cell with most configs (size 1, 5120 tokens: 4 lr x B configs)
    heat = figure(at, "hp_heatmap")
    assert "N=1.26e+04, D=5.12e+03" in heat["layout"]["title"]["text"]
    assert np.isfinite(np.array(heat["data"][0]["z"], dtype=float)).sum() == 4
    at.selectbox(key="hp_cell").set_value(1).run()
    assert figure(checked(at), "hp_heatmap")["layout"]["title"]["text"] != heat["layout"]["title"]["text"]

    at.number_input(key="hp_calc_N").set_value(1e6).run()
    at.number_input(key="hp_calc_D").set_value(1e8).run()
    pred = predict_hparams(expected, N=1e6, D=1e8)
    metrics = {m.label: m.value for m in checked(at).metric}
    assert metrics["lr* (step form)"] == fmt(pred.lr) and metrics["B* (step form, tokens)"] == fmt(pred.B)


def branch_table(path: Path) -> Path:
    """Branch losses around a known CBS(D) = 2^20·(1 − exp(−(D/2e9)^0.7)) tokens (as tests/analysis/test_cbs)."""
    rows = []
    for D in np.geomspace(1e7, 2e10, 8):
        cbs = 2.0 ** 20 * -np.expm1(-(D / 2e9) ** 0.7)
        for B in 2.0 ** np.arange(12, 21.5, 1.0):
            rows.append({"checkpoint_tokens": D, "B": B, "loss": 3.0 * (1 + 0.01 * B / cbs), "ref_loss": 3.0})
    pl.DataFrame(rows).write_csv(path)
    return path


def test_cbs_page_shows_noise_scale_and_fits_branch_cbs(store_uri, monkeypatch, tmp_path):
    at = open_page(store_uri, "4_Critical_batch_size.py", monkeypatch)
    picked = at.multiselect(key="cbs_runs").value
    noise = load_curves(store_uri, run_ids=picked, metrics=["noise/b_simple"])
    fig = figure(at, "cbs_noise")
    assert sum(len(t["y"]) for t in fig["data"]) == noise.height > 0
    assert "0 branch runs in the store" in shown(at)

    table = branch_table(tmp_path / "branches.csv")
    at.radio(key="cbs_source").set_value("a CSV/Parquet table").run()
    at.text_input(key="cbs_path").input(str(table)).run()
    expected = fit_cbs_curve(local_cbs(load_table(table, required=("checkpoint_tokens", "B", "loss"))),
                             bootstrap=200)
    text = shown(checked(at))
    assert f"**exp** = {fmt(expected.power.params['exp'])}" in text
    assert any("batch.schedule=stepwise" in c.value for c in at.code)
    before = figure(at, "cbs_curve")
    at.number_input(key="cbs_tolerance").set_value(0.05).run()
    after = figure(checked(at), "cbs_curve")
    assert before["data"][0]["y"] != after["data"][0]["y"]  # a looser ε admits larger batches


def test_export_page_offers_the_session_s_laws_tables_and_figures(store_uri, monkeypatch):
    at = open_page(store_uri, "2_Loss_laws.py", monkeypatch)
    at.switch_page("pages/5_Export.py").run()
    labels = [b.label for b in checked(at).get("download_button")]
    assert {"Runs (CSV)", "Runs (Parquet)", "Fitted laws (JSON)", "HTML"} <= set(labels)
    exports = at.session_state["exports"]
    laws = json.loads(export.laws_json({name: law for items in exports.values()
                                        for name, law in items["laws"].items()}))
    expected = fit_loss(final_points(store_uri), form="chinchilla", bootstrap=200)
    assert laws["loss_law_chinchilla"]["params"]["E"] == pytest.approx(expected.params["E"])
    runs = exports["loss laws"]["tables"]["loss_points"]
    assert pl.read_parquet(export.table_bytes(runs, "parquet")).equals(runs)
    assert pl.read_csv(export.table_bytes(runs, "csv"))["loss"].to_list() == pytest.approx(runs["loss"].to_list())
    html = export.figure_html(exports["loss laws"]["figures"]["loss_law"])
    assert html.lstrip().lower().startswith(b"<!doctype html>") and b"plotly" in html and b"Loss against" in html


def test_cbs_compares_branches_with_the_reference_runs_own_batch():
    """Branches record the reference's batch (B_ref); the smallest B is not the reference here."""
    from app.fits import cbs_fit

    losses = {128: 2.90, 256: 3.00, 512: 3.01, 1024: 3.20}  # 512 is within 1% of the reference at 256, 1024 not
    branches = pl.DataFrame([{"checkpoint_tokens": t, "B": float(B), "loss": loss * (1 - t / 1e6), "B_ref": 256.0}
                             for t in (1e4, 2e4, 4e4, 8e4) for B, loss in losses.items()])
    local, _, _ = cbs_fit(branches, 0.01, 0)
    assert local["cbs"].to_list() == [512.0] * 4
    local, _, _ = cbs_fit(branches.drop("B_ref"), 0.01, 0)  # no record: the smallest B is the reference
    assert local["cbs"].to_list() == [128.0] * 4


def test_loss_law_points_leave_out_cbs_branches():
    from app.data import branch_points, final_points

    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "run_name": ["a", "b", "c"], "status": ["FINISHED"] * 3,
                         "N": [1e5, 1e6, 1e6], "D": [1e8, 1e8, 1e6], "C": [6e13, 6e14, 6e12], "B": [512.0] * 3,
                         "lr": [3e-3] * 3, "loss": [3.0, 2.8, 1.0], "tag.branch_of": [None, None, "b"],
                         "tag.checkpoint_tokens": [None, None, "1000000"]})
    assert final_points(runs)["run_id"].to_list() == ["a", "b"]
    assert branch_points(runs)["loss"].to_list() == [1.0], "the CBS page still reads the branch"
