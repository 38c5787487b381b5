"""lab-demo's smallest configuration end to end (--smoke, in-process runs): what a newcomer's terminal shows."""

from __future__ import annotations

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
    assert [b.split(":")[0] for b in bars] == ["1/3 IsoFLOP", "2/3 lr x B", "3/3 CBS"]  # one bar per study
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
    report = (tmp_path / "outputs" / "demo-report.txt").read_text()
    assert "Approach 3" in report and "Chinchilla's published points" in report
    assert (tmp_path / "outputs" / "demo.log").stat().st_size > 0
