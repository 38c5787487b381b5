"""A recipe at a target: lr*, B* and the steps, warmup and batch warmup they imply, as lab-train overrides."""

import json
import math

import pytest

from analysis import cli
from analysis.laws.hparams import fit_hparams, predict_hparams
from analysis.recipe import recipe
from tracking.record import Param
from test_hparams import landscape, step_law


@pytest.fixture(scope="module")
def fit():
    return fit_hparams(landscape(step_law, noise=5e-4, seed=2), method="convex", bootstrap=50)


def test_recipe_at_N_D_follows_the_prediction(fit):
    p = predict_hparams(fit, N=1e8, D=1e10)
    r = recipe(fit, seq_len=512, N=1e8, D=1e10, granularity=8)
    assert r.lr == p.lr and r.B == p.B and r.form == "step"
    assert r.sequences % 8 == 0 and abs(r.sequences * 512 / p.B - 1) < 8 * 512 / p.B
    assert r.steps == math.ceil(1e10 / (r.sequences * 512))
    assert r.steps_ci95[0] <= r.steps <= r.steps_ci95[1]
    assert r.warmup_tokens == pytest.approx(0.05e10) and r.warmup_steps == math.ceil(0.05e10 / (r.sequences * 512))
    ov = dict(o.split("=", 1) for o in r.to_overrides())
    assert ov["batch.schedule"] == "linear" and int(ov["batch.start_sequences"]) < r.sequences
    # lab-train rescales lr by sqrt(batch / start batch): it reaches lr* at the final batch
    ramp = r.sequences / int(ov["batch.start_sequences"])
    assert float(ov[Param.LR]) * math.sqrt(ramp) == pytest.approx(r.lr, rel=1e-3)
    assert float(ov["budget.tokens"]) == pytest.approx(1e10) and ov["model.seq_len"] == "512"


def test_recipe_from_C_splits_by_tokens_per_param_and_constant_batch(fit):
    r = recipe(fit, seq_len=256, C=6e20, tokens_per_param=20, batch_warmup=False)
    assert r.form == "deepseek" and r.D == pytest.approx(20 * r.N) and r.C == pytest.approx(6e20)
    ov = dict(o.split("=", 1) for o in r.to_overrides())
    assert ov["batch.schedule"] == "constant" and float(ov[Param.LR]) == pytest.approx(r.lr, rel=1e-3)
    with pytest.raises(ValueError, match="seq_len"):
        recipe(fit, seq_len=0, C=6e20)


def test_lab_fit_hparams_prints_the_recipe(tmp_path, capsys):
    table, out = tmp_path / "l.csv", tmp_path / "hp.json"
    landscape(step_law, noise=5e-4, seed=2).write_csv(table)
    code = cli.main(["hparams", "--input", str(table), "--method", "convex", "--bootstrap", "20", "--target-N",
                     "1e8", "--target-D", "1e10", "--seq-len", "512", "--no-sensitivity", "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0 and "recipe at the target" in stdout and f"lab-train {Param.LR}=" in stdout
    fit = json.loads(out.read_text())
    assert fit["recipe"]["seq_len"] == 512 and "batch.schedule=linear" in fit["recipe"]["overrides"]
    assert fit["sensitivity"] is None
