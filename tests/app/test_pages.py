"""Every dashboard page under Streamlit's AppTest, against a store written by real lab-train runs (conftest).

Each test opens the app at Home.py, switches to a page as a user would, and asserts on what the page shows:
the fitted numbers (recomputed here through the public analysis API with the page's settings), figures whose
data match the store, and figures that change when a widget changes.
"""

from __future__ import annotations

import base64
import json
import time
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
from app import export, pages
from app.ui import fmt

ROOT = Path(__file__).resolve().parents[2]
CHINCHILLA = ROOT / "tests" / "data" / "chinchilla_points.csv"
PENDING = "bootstrap resamples…"  # the Loss laws page's caption while the intervals are computed


def open_page(uri: str, page: str | None, monkeypatch) -> AppTest:
    monkeypatch.setenv("LAB_TRACKING_URI", uri)
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=240).run()
    if page:
        at.switch_page(page).run()
    return settled(checked(at))


def settled(at: AppTest, timeout_s: float = 120.0) -> AppTest:
    """The page once the loss law's intervals, bootstrapped in a worker thread, are shown: rerun as the page's
    poll does in a browser (AppTest runs no timers)."""
    deadline = time.monotonic() + timeout_s
    while any(PENDING in c.value for c in at.caption):
        assert time.monotonic() < deadline, "the bootstrap did not finish"
        time.sleep(0.2)
        at.run()
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


def final_points(uri: str, sweep: str = "ladder") -> pl.DataFrame:
    """The finished runs of a sweep as points, C = 6·N·D."""
    runs = load_runs(uri).filter((pl.col("status") == "FINISHED") & (pl.col("sweep") == sweep))
    return runs.select("run_id", "run_name", "sweep", "N", "D", (6 * pl.col("N") * pl.col("D")).alias("C"), "B", "lr",
                       "loss")


def lab_fit(*argv) -> dict:
    """`lab-fit argv... --out JSON` in-process; its JSON."""
    import tempfile

    from analysis.cli import main

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fit.json"
        assert main([*map(str, argv), "--quiet", "--out", str(out)]) == 0
        return json.loads(out.read_text())


def test_home_summarises_the_store(store_uri, monkeypatch):
    at = open_page(store_uri, None, monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    # 6 ladder, 3 schedule-study, 9 lr x B runs and one that diverges (tests/app/conftest.py)
    assert metrics == {"Runs": "19", "Finished": "18", "Experiments": "1", "Sweeps": "4"}


def test_one_store_box_serves_every_page_and_keeps_the_store_chosen(store_uri, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    other = f"sqlite:///{tmp_path}/other.db"
    client = MlflowClient(other)
    client.create_run(client.create_experiment("other", artifact_location=(tmp_path / "a").as_uri()), run_name="one")
    at = open_page(store_uri, None, monkeypatch)
    assert "19 runs in the store" in [c.value for c in at.sidebar.caption]
    at.sidebar.text_input(key="tracking_uri").input(other).run()
    assert {m.label: m.value for m in checked(at).metric}["Runs"] == "1"
    for page in (pages.RUNS.path, pages.FORECASTS.path, pages.HOME.path):  # the box is the entrypoint's, not a page's
        at.switch_page(page).run()
        assert [t.value for t in checked(at).sidebar.text_input if t.key == "tracking_uri"] == [other]
        assert "1 runs in the store" in [c.value for c in at.sidebar.caption]
    assert {m.label: m.value for m in at.metric}["Runs"] == "1"


def test_runs_page_curves_come_from_the_store_and_follow_the_widgets(store_uri, monkeypatch):
    at = open_page(store_uri, pages.RUNS.path, monkeypatch)
    assert at.dataframe[0].value.shape[0] == 19
    # opens on all runs of the most recent sweep of finished runs, curves loaded for them only
    assert at.selectbox(key="runs_sweep").value == "lr_batch"
    picked = at.multiselect(key="runs_picked_lr_batch").value
    sweep_ids = load_runs(store_uri).filter(pl.col("sweep") == "lr_batch")["run_id"].to_list()
    assert sorted(picked) == sorted(sweep_ids) and len(picked) == 9
    fig = figure(at, "runs_curves")
    assert len(fig["data"]) == 9 and "tokens" in fig["layout"]["xaxis"]["title"]["text"]
    assert "coloured by N" in fig["layout"]["title"]["text"]
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
    longest = load_runs(store_uri).filter(pl.col("run_id").is_in(picked))["steps"].max()
    assert max(len(t["x"]) for t in fig2["data"]) == longest == 80  # train/loss at every step of the longest run
    at.slider(key="runs_smoothing").set_value(0.9).run()
    smooth = figure(checked(at), "runs_curves")
    raw_y, smooth_y = np.array(fig2["data"][0]["y"]), np.array(smooth["data"][0]["y"])
    assert smooth_y[0] == pytest.approx(raw_y[0]) and np.abs(np.diff(smooth_y)).sum() < np.abs(np.diff(raw_y)).sum()

    at.multiselect(key="_filter_status").set_value(["FAILED"]).run()
    table = checked(at).dataframe[0].value
    assert list(table["status"]) == ["FAILED"] and list(table["sweep"]) == ["diverged"]


def test_loss_law_page_fits_the_grid_sweep_as_lab_fit_does_and_reacts_to_form_and_points(store_uri, monkeypatch):
    at = open_page(store_uri, pages.LOSS_LAWS.path, monkeypatch)
    assert at.selectbox(key="loss_sweep").value == "ladder"  # the most recent sweep of design grid or isoflop
    expected = lab_fit("loss", "--tracking-uri", store_uri, "--sweep", "ladder", "--bootstrap", 200)
    text = shown(at)
    for name in ("E", "alpha", "beta"):
        assert f"**{name}** = {fmt(expected['params'][name])}" in text
    assert "6 points from 6 runs" in text and "**6 runs** of sweep `ladder` feed this fit" in text
    assert any("sweep=ladder" in str(link.proto) for link in at.get("page_link"))  # the runs, on the Runs page
    before = figure(at, "loss_points")
    assert len(before["data"][0]["x"]) == 6
    at.radio(key="loss_x_3").set_value("C").run()
    on_C = figure(checked(at), "loss_points")
    points = final_points(store_uri)
    assert sorted(on_C["data"][0]["x"]) == pytest.approx(sorted(points["C"].to_list()))  # the points at 6·N·D
    assert on_C["layout"]["xaxis"]["title"]["text"] == "C = 6·N·D (FLOPs)"
    at.radio(key="loss_x_3").set_value("N").run()
    on_N = figure(checked(at), "loss_points")
    curves = [t for t in on_N["data"] if t["name"].startswith("fit D=")]
    assert len(curves) == 2 and all(len(set(t["x"])) > 10 for t in curves)  # one curve over N per D, not a line

    at.selectbox(key="loss_form").select("L(N)").run()
    expected_n = fit_loss(points, form="L(N)", bootstrap=200)
    assert f"**alpha** = {fmt(expected_n.params['alpha'])}" in shown(checked(at))  # the point estimate at once
    lo, hi = expected_n.ci95["alpha"]
    assert f"**alpha** = {fmt(expected_n.params['alpha'])} (95%: {fmt(lo)}–{fmt(hi)}" in shown(settled(at))
    after = figure(at, "loss_points")
    assert after["layout"]["title"]["text"] == "Loss against N: L(N)" != before["layout"]["title"]["text"]

    at.radio(key="loss_mode").set_value("every validation point").run()
    n_val = load_curves(store_uri, metrics=["val/loss"]).join(points.select("run_id"), on="run_id").height
    assert f"{n_val} points from 6 runs" in shown(checked(at))
    assert len(figure(at, "loss_points")["data"][0]["x"]) == n_val
    assert not at.metric  # lazy tabs: the held-out check is not computed until its tab is open
    at.session_state["loss_tab"] = "Held-out check"
    held_out = {m.label: m.value for m in checked(at.run()).metric}
    assert int(held_out["Held-out runs"]) > 0 and held_out["Mean |relative error|"].endswith("%")

    at.selectbox(key="loss_sweep").set_value("all runs passing the filters").run()  # lr x B runs are no points
    assert "left out 12 runs of design ['lr_batch', 'schedule_study']" in "\n".join(c.value for c in checked(at).caption)


def test_loss_law_page_on_a_table_gives_isoflop_minima_and_frontier(store_uri, monkeypatch):
    at = open_page(store_uri, pages.LOSS_LAWS.path, monkeypatch)
    at.radio(key="loss_source").set_value("a CSV/Parquet table").run()
    at.text_input(key="loss_path").input(str(CHINCHILLA)).run()
    at.number_input(key="loss_bootstrap").set_value(50).run()
    at.session_state["loss_tab"] = "IsoFLOP and frontier"
    at.run()
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


def test_hyperparameter_page_fits_the_lr_batch_sweep_as_lab_fit_does_and_answers_the_calculator(store_uri,
                                                                                                  monkeypatch):
    at = open_page(store_uri, pages.HYPERPARAMETERS.path, monkeypatch)
    assert at.selectbox(key="hp_sweep").value == "lr_batch"
    expected = lab_fit("hparams", "--tracking-uri", store_uri, "--sweep", "lr_batch", "--bootstrap", 200)
    text = shown(at)
    assert "**9 runs** of sweep `lr_batch` feed this fit" in text
    for name in ("coef", "exp_N", "exp_D"):
        assert f"**{name}** = {fmt(expected['lr'][name])}" in text
    # the heatmap opens on the cell with most configs (size 1, 5120 tokens: 3 lr x B configs)
    heat = figure(at, "hp_heatmap")
    assert "N=1.26e+04, D=5.12e+03" in heat["layout"]["title"]["text"]
    assert np.isfinite(np.array(heat["data"][0]["z"], dtype=float)).sum() == 3
    at.selectbox(key="hp_cell").set_value(1).run()
    assert figure(checked(at), "hp_heatmap")["layout"]["title"]["text"] != heat["layout"]["title"]["text"]

    at.number_input(key="hp_calc_N").set_value(1e6).run()
    at.number_input(key="hp_calc_D").set_value(1e8).run()
    points = final_points(store_uri, "lr_batch")
    pred = predict_hparams(fit_hparams(points, bootstrap=200), N=1e6, D=1e8)
    metrics = {m.label: m.value for m in checked(at).metric}
    assert metrics["lr* (step form)"] == fmt(pred.lr) and metrics["B* (step form, tokens)"] == fmt(pred.B)
    assert "extrapolation over" in shown(at)  # N = 1e6 is 10x beyond the largest N fitted
    # the full recipe at the target, with the runs' seq_len and micro_batch, as lab-fit hparams --target-* prints it
    # (both read those settings from the fitted runs)
    recorded = load_runs(store_uri).filter(pl.col("sweep") == "lr_batch")
    seq_len, gran = at.number_input(key="hp_recipe_seq_len").value, at.number_input(key="hp_recipe_gran").value
    assert seq_len == recorded["seq_len"][0] != 256 and gran == int(recorded["param.batch.micro_batch"][0])
    cli = lab_fit("hparams", "--tracking-uri", store_uri, "--sweep", "lr_batch", "--bootstrap", 200, "--target-N", 1e6,
                  "--target-D", 1e8, "--no-sensitivity")
    assert (cli["recipe"]["seq_len"], cli["recipe"]["sequences"] % gran) == (seq_len, 0)
    assert "lab-train " + " ".join(cli["recipe"]["overrides"]) in [c.value for c in at.code]

    at.selectbox(key="hp_sweep").set_value("ladder").run()  # a size ladder is no lr x B landscape
    assert "left out 6 runs of design ['grid']" in "\n".join(c.value for c in checked(at).caption)


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
    at = open_page(store_uri, pages.CRITICAL_BATCH_SIZE.path, monkeypatch)
    picked = at.multiselect(key="cbs_runs").value
    noise = load_curves(store_uri, run_ids=picked, metrics=["noise/b_simple"])
    fig = figure(at, "cbs_noise")
    assert sum(len(t["y"]) for t in fig["data"]) == noise.height > 0
    assert "0 branch runs (tag `branch_of`) in the selection" in shown(at)

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


def branch_store(directory: Path) -> str:
    """A store with one CBS sweep as lab-sweep writes it: a reference run (seq_len 32, micro_batch 4, B = 256
    tokens, D = 1e6) and its branches at 4 checkpoints x 5 batches, losses around a CBS that grows with D."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric as M, Param as P

    from tracking.record import Design, Metric, Param, Role, Tag

    uri = f"sqlite:///{directory}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cbs", artifact_location=(directory / "artifacts").as_uri())

    def run(name: str, B: float, D: float, loss: float, tags: dict[str, str], params: dict[str, object]) -> str:
        run_id = client.create_run(exp, run_name=name, tags={Tag.SWEEP: "cbs-1", Tag.DESIGN: Design.CBS, **tags}
                                   ).info.run_id
        params = {Param.N: 12640, Param.SEQ_LEN: 32, Param.B_TOKENS: int(B), "batch.micro_batch": 4, **params}
        client.log_batch(run_id, metrics=[M(Metric.TOKENS, D, 0, 1), M(Metric.VAL_LOSS, loss, 0, 1)],
                         params=[P(k, str(v)) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED")
        return run_id

    reference = run("ref", 256, 1e6, 3.0, {Tag.ROLE: Role.REFERENCE}, {})
    for T in (1e5, 2e5, 4e5, 8e5):
        cbs = 4096 * -np.expm1(-(T / 3e5) ** 0.8)
        for B in (256, 512, 1024, 2048, 4096):
            run(f"branch-T{T:g}-B{B}", B, T + 65536, 3.0 * (1 + 0.01 * B / cbs) * (1 - T / 1e7),
                {Tag.ROLE: Role.BRANCH, Tag.BRANCH_OF: reference, Tag.CHECKPOINT_TOKENS: str(int(T))},
                {Param.BRANCH_B_REF: 256})
    return uri


def test_cbs_page_fits_the_branch_sweep_as_lab_fit_does_with_the_runs_settings(tmp_path, monkeypatch):
    uri = branch_store(tmp_path)
    at = open_page(uri, pages.CRITICAL_BATCH_SIZE.path, monkeypatch)
    assert at.selectbox(key="cbs_sweep").value == "cbs-1"
    expected = lab_fit("cbs", "--tracking-uri", uri, "--sweep", "cbs-1", "--bootstrap", 200)
    text = shown(at)
    assert "**20 runs** of sweep `cbs-1` feed this fit" in text
    for name, value in expected["curve"]["power"]["params"].items():
        assert f"**{name}** = {fmt(value)}" in text
    # the warmup plan's settings come from the reference run: seq_len 32, micro_batch 4, D = 1e6 tokens
    assert at.number_input(key="cbs_seq_len").value == 32 and at.number_input(key="cbs_gran").value == 4
    assert at.number_input(key="cbs_total").value == 1e6
    (code,) = [c.value for c in at.code]
    assert code == "lab-train " + " ".join(expected["warmup"]["overrides"])


def test_export_page_offers_the_session_s_laws_with_their_provenance_and_never_a_stale_one(store_uri, monkeypatch):
    at = open_page(store_uri, pages.LOSS_LAWS.path, monkeypatch)
    at.session_state["loss_tab"] = "IsoFLOP and frontier"
    checked(at.run())
    at.switch_page(pages.EXPORT.path).run()
    buttons = {b.proto.label: b.proto for b in checked(at).get("download_button")}
    assert {"Runs (CSV)", "Runs (Parquet)", "Fitted laws (JSON)", "HTML", "All of the above (ZIP)"} <= set(buttons)
    names = at.session_state["export_file_names"]
    assert len(names) == len(set(names)), "two exports share a file name"
    assert "isoflop-isoflop-profiles.html" in names  # every figure of the page, the IsoFLOP one included
    exports = at.session_state["exports"]
    law = exports["loss laws"]["laws"]["loss_law_chinchilla"]
    provenance = exports["loss laws"]["provenance"]["laws/loss_law_chinchilla"]
    doc = json.loads(export.laws_json({"loss_law": export.with_provenance(law, provenance)}))["loss_law"]
    expected = fit_loss(final_points(store_uri), form="chinchilla", bootstrap=200)
    assert doc["params"]["E"] == pytest.approx(expected.params["E"])
    ladder = sorted(final_points(store_uri)["run_id"].to_list())
    assert doc["provenance"]["store"] == store_uri and doc["provenance"]["sweep"] == "ladder"
    assert doc["provenance"]["run_ids"] == ladder and doc["provenance"]["filters"] == {}
    assert doc["provenance"]["settings"]["bootstrap"] == 200 and doc["provenance"]["version"]
    runs = exports["loss laws"]["tables"]["loss_points"]
    assert pl.read_parquet(export.table_bytes(runs, "parquet")).equals(runs)
    assert pl.read_csv(export.table_bytes(runs, "csv"))["loss"].to_list() == pytest.approx(runs["loss"].to_list())
    html = export.figure_html(exports["loss laws"]["figures"]["loss_law"])
    assert html.lstrip().lower().startswith(b"<!doctype html>") and b"plotly" in html and b"Loss against" in html

    # Filters changed after the fit: the law no longer describes what the user sees, and is not offered.
    at.multiselect(key="_filter_status").set_value(["FINISHED"]).run()
    labels = [b.proto.label for b in checked(at).get("download_button")]
    assert "Fitted laws (JSON)" not in labels
    assert any("loss laws/loss_law_chinchilla" in w.value for w in at.warning)


def test_the_page_zip_holds_every_file_and_the_provenance():
    import io
    import zipfile

    payload = export.zip_bytes({"laws.json": b"{}", "loss-laws-loss-law.html": b"<html>", "provenance.json": b"{}"})
    assert sorted(zipfile.ZipFile(io.BytesIO(payload)).namelist()) == ["laws.json", "loss-laws-loss-law.html",
                                                                       "provenance.json"]
    assert export.file_name("loss laws", "runs", "csv") != export.file_name("runs", "runs", "csv")


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


def test_lab_fit_and_the_dashboard_data_layer_take_the_same_points(store_uri):
    """The one points stage (analysis.points): on one store and sweep, lab-fit's points are the dashboard's."""
    from analysis.cli import _parser
    from analysis.cli_input import Progress, frame
    from app import data

    runs = load_runs(store_uri)
    for law, sweep, needed in (("loss", "ladder", ["N", "D", "loss"]),
                               ("hparams", "lr_batch", ["N", "D", "lr", "B", "loss"])):
        args = _parser().parse_args([law, "--tracking-uri", store_uri, "--sweep", sweep])
        cli = frame(args, needed, Progress(quiet=True), law).sort("run_id")
        dashboard = data.law_points(runs.filter(pl.col("sweep") == sweep), law).frame.sort("run_id")
        assert cli.height > 0 and cli.equals(dashboard), law
        assert (dashboard["C"] == 6 * dashboard["N"] * dashboard["D"]).all()


def test_a_missing_table_path_is_one_clear_error_not_a_traceback(store_uri, monkeypatch, tmp_path):
    at = open_page(store_uri, pages.LOSS_LAWS.path, monkeypatch)
    at.radio(key="loss_source").set_value("a CSV/Parquet table").run()
    at.text_input(key="loss_path").input(str(tmp_path / "missing.csv")).run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "missing.csv" in error and error.startswith("Cannot read the table")


def test_tables_print_large_and_small_numbers_readably():
    from app.ui import number_format

    assert number_format(pl.Series([6.728e10, 3.0])) == "%.3e"  # not 67280000000
    assert number_format(pl.Series([3.079, 1.8])) == "%.4g"
    assert number_format(pl.Series([20, 40])) == "localized"


def isoflop_store(directory: Path) -> str:
    """An IsoFLOP sweep as lab-sweep tags it (design isoflop, budget C per run): 3 budgets x 5 sizes on the
    Chinchilla law (0.2% noise)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric as M, Param as P

    from tracking.record import Design, Metric, Param, Tag

    uri = f"sqlite:///{directory}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("iso", artifact_location=(directory / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    for C in (1e19, 1e20, 1e21):
        for N in np.geomspace(C ** 0.5 / 300, C ** 0.5 / 10, 5):
            D = C / (6 * N)
            loss = (1.69 + 406.4 / N ** 0.34 + 410.7 / D ** 0.28) * (1 + 0.002 * rng.normal())
            run_id = client.create_run(exp, run_name=f"iso-C{C:.0e}-N{N:.2e}", tags={
                Tag.SWEEP: "iso-1", Tag.DESIGN: Design.ISOFLOP, Tag.BUDGET: f"{C:g}"}).info.run_id
            client.log_batch(run_id, metrics=[M(Metric.TOKENS, D, 0, 1), M(Metric.VAL_LOSS, loss, 0, 1)],
                             params=[P(Param.N, str(int(N))), P(Param.B_TOKENS, "524288"), P(Param.LR, "0.001")])
            client.set_terminated(run_id, "FINISHED")
    return uri


def test_isoflop_tab_fits_the_isoflop_sweep_as_lab_fit_isoflop_does(tmp_path, monkeypatch):
    uri = isoflop_store(tmp_path)
    at = open_page(uri, pages.LOSS_LAWS.path, monkeypatch)
    assert at.selectbox(key="loss_sweep").value == "iso-1"
    at.session_state["loss_tab"] = "IsoFLOP and frontier"
    text = shown(checked(at.run()))
    expected = lab_fit("isoflop", "--tracking-uri", uri, "--sweep", "iso-1", "--bootstrap", 200)
    for name in ("coef", "exp"):
        assert f"**{name}** = {fmt(expected['N_law']['params'][name])}" in text


def test_runs_page_deep_links_to_a_sweep_or_to_runs(store_uri, monkeypatch):
    monkeypatch.setenv("LAB_TRACKING_URI", store_uri)
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=240)
    at.query_params["sweep"] = "ladder"
    at.run().switch_page(pages.RUNS.path).run()
    assert checked(at).selectbox(key="runs_sweep").value == "ladder"
    assert len(at.multiselect(key="runs_picked_ladder").value) == 6 == len(figure(at, "runs_curves")["data"])

    ladder = final_points(store_uri)["run_id"].to_list()[:2]
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=240)
    at.query_params["runs"] = ",".join(ladder)
    at.run().switch_page(pages.RUNS.path).run()
    assert sorted(checked(at).multiselect(key="runs_picked_picked").value) == sorted(ladder)
