"""The demo's terminal: everything written while a study runs lands in the log; the study's bar counts its runs
from the store and prints one line when the terminal is not a tty."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quiet_sends_this_process_and_its_children_to_the_log_and_the_bar_counts_runs(tmp_path):
    script = textwrap.dedent("""
        import subprocess, sys
        from pathlib import Path
        from mlflow.tracking import MlflowClient
        from sweeps.demo_console import Console, StudyBar
        from tracking.record import Tag

        uri = "sqlite:///mlflow.db"
        client = MlflowClient(uri)
        exp = client.create_experiment("demo")
        console = Console(Path("outputs/demo.log"))
        console.print("shown")
        bar = StudyBar(console, "1/1 study", uri, "demo", "s1", every_s=0.2)
        with console.quiet():
            print("hidden print")
            print("hidden stderr", file=sys.stderr)
            subprocess.run([sys.executable, "-c", "print('hidden child')"])
            client.create_run(exp, run_name="sweep-s1", tags={Tag.SWEEP_PARENT: "s1", Tag.SWEEP_RUNS: "3"})
            for name in ("a", "b"):
                run = client.create_run(exp, run_name=name, tags={Tag.SWEEP: "s1"})
                client.set_terminated(run.info.run_id, "FINISHED")
            client.create_run(exp, run_name="c", tags={Tag.SWEEP: "s1"})
        bar.close(ok=False)
        print("shown after")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout + proc.stderr
    assert "hidden" not in shown
    assert "shown" in proc.stdout and "shown after" in proc.stdout
    bars = [line for line in proc.stderr.splitlines() if "runs |" in line]
    assert len(bars) == 1 and bars[0].startswith("1/1 study: 2/3 runs") and "did not finish" in bars[0]
    log = (tmp_path / "outputs" / "demo.log").read_text()
    assert "hidden print" in log and "hidden stderr" in log and "hidden child" in log
