"""lab-demo's smallest configuration end to end (--smoke, in-process runs): what a newcomer's terminal shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from analysis.verdict import USABLE, VERDICTS
from sweeps.demo_page import DEMO_LAWS, ISOFLOP_LAW, APPROACH3_LAW

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_demo_prints_progress_and_one_closing_page_with_a_verdict_per_law(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "sweeps.demo", "--smoke", "--jobs", "1", "--bootstrap", "20"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    shown = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert len(shown) <= 120, "\n".join(shown)
    text = "\n".join(shown)
    assert "Traceback" not in text and "#0 :" not in text and "Launching" not in text  # no Hydra job dumps
    bars = [line for line in shown if " runs |" in line]
    # one bar per study; the schedule study's held-out run trains after its prediction, behind a bar of its own;
    # the smoke CBS study proposes no warmup (too few checkpoints), so no warmup check runs
    assert [b.split(":")[0] for b in bars] == ["1/5 IsoFLOP", "2/5 lr x B", "3/5 CBS", "4/5 schedules",
                                               "4/5 schedules, held out"]
    demo_start = shown.index("This demo's runs (CPU scale):")
    ref_start = shown.index("Chinchilla's published points, fitted by the same functions:")

    def verdicts(block: list[str]) -> dict[str, str]:
        out = {}
        for law_line, verdict_line in zip(block, block[1:]):
            law = next((law for law in DEMO_LAWS if law_line.strip().startswith(law)), None)
            if law is not None:
                assert "published" in law_line, law_line
                verdict = verdict_line.strip().removeprefix("-> ").split(":")[0]
                assert verdict in VERDICTS, verdict_line
                out[law] = verdict
        return out

    assert set(verdicts(shown[demo_start:ref_start])) == set(DEMO_LAWS)
    reference = verdicts(shown[ref_start:])
    assert reference == {ISOFLOP_LAW: USABLE, APPROACH3_LAW: USABLE}  # the same fits work at Chinchilla's scale
    assert any(line.startswith("Done in") for line in shown)
    held_out = next(line for line in shown if line.startswith("Schedule law"))
    assert "wsd predicted before it trained" in held_out and "nan" not in held_out, held_out
    forecast = json.loads((tmp_path / "outputs" / "demo-schedule-forecast.json").read_text())
    assert set(forecast["predicted_final_loss"]) == {"wsd"} and forecast["law"]["form"] == "multi-power"
    assert any(line.startswith("Batch warmup check: not run") for line in shown)
    report = (tmp_path / "outputs" / "demo-report.txt").read_text()
    assert "Approach 3" in report and "Chinchilla's published points" in report
    assert (tmp_path / "outputs" / "demo.log").stat().st_size > 0


def test_the_demo_checks_the_warmup_lab_fit_cbs_proposes_with_the_reference_run_settings():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from analysis.laws.cbs import BatchWarmupPlan
    from lab.train import CONF_MODULE
    from sweeps.catalog import expand
    from sweeps.demo import FAST
    from sweeps.demo_schedules import warmup_check_overrides
    from tracking.record import Role, Tag

    plan = BatchWarmupPlan(start_sequences=4, milestones=((28160, 8), (60672, 16)), seq_len=64)
    overrides = warmup_check_overrides(plan, FAST.branches, "wuc")
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=[*overrides, "model.seq_len=64"], return_hydra_config=True)
    specs = expand(OmegaConf.to_container(cfg.hydra.sweeper.design), OmegaConf.to_object(cfg.model),
                   OmegaConf.to_object(cfg.batch))
    assert [s.tags[Tag.ROLE] for s in specs] == [Role.BATCH_WARMUP, Role.CONSTANT_FINAL, Role.CONSTANT_START]
    assert cfg.optim.schedule == "wsd" and cfg.hydra.sweeper.design.tokens == FAST.branches.tokens
    assert "batch.milestones=[[28160,8],[60672,16]]" in specs[0].overrides
    assert "model.d_model=12" in specs[0].overrides  # the CBS reference's model
