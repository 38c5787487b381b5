"""A real install: the project built as a wheel, installed non-editable into a fresh venv, run from an empty directory.

The configs must come from the installed package (``pkg://conf``), never from the source tree, so the source tree is
kept off ``sys.path``: the command runs outside it with no PYTHONPATH. The fresh venv gets only the wheel
(``--no-deps``); a ``.pth`` file lets it see the running venv's site-packages for the dependencies, so the test needs
no network and no second copy of torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not part of the wheel, or generated: left out of the copy the wheel is built from.
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "tests", "notebooks",
                              "benchmarks", ".cache", "outputs", "multirun", "checkpoints", "mlruns", "mlartifacts",
                              "*.db", "*.db-*", "*.db.lock", "*.ckpt")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(args)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def test_wheel_runs_lab_train_and_lab_sweep_from_an_empty_directory(tmp_path: Path) -> None:
    # A copy of the project, so that the build's build/ and *.egg-info never land in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
          str(tmp_path / "dist"), str(src)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("scaling_lab-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).strip())
    # The dependencies: the running interpreter's site-packages, found from its own prefix (never a fixed path).
    deps = {sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})[k] for k in ("purelib", "platlib")}
    (purelib / "dev-venv-deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    # --ignore-installed: the running venv may hold an editable scaling-lab; pip must neither see nor touch it.
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], tmp_path, env)

    work = tmp_path / "empty"
    work.mkdir()
    where = _run([str(python), "-c", "import sys, conf, lab, sweeps; from importlib import resources; "
                  "print(conf.__file__, lab.__file__, sweeps.__file__, sys.path, sep='\\n'); "
                  "assert (resources.files('conf') / 'study' / 'smoke.yaml').is_file()"], work, env)
    for line in where.splitlines()[:3]:
        assert Path(line).is_relative_to(purelib), f"imported from outside the install: {line}"
    assert str(ROOT) not in where.splitlines()[3], "the source tree is on sys.path"

    out = _run([str(venv / "bin" / "lab-train"), "experiment=smoke", "trainer.progress_bar=false"], work, env)
    assert "FINISHED: run" in out, out
    out = _run([str(venv / "bin" / "lab-sweep"), "experiment=smoke_sweep", "trainer.progress_bar=false"], work, env)
    assert "4 finished" in out, out
    assert (work / "mlflow.db").is_file()
