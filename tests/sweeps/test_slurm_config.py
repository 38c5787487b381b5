"""`hydra/launcher=slurm` as shipped: the sbatch script submitit would submit for each size tier.

No SLURM here: submitit only checks that `srun` is on PATH before it writes a script, so a stand-in `srun` lets the
real launcher (SizedSlurmLauncher, composed from conf/hydra/launcher/slurm.yaml) produce the real sbatch text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from hydra_plugins.lab_sweeper.sized_submitit import SizedSlurmLauncher
from lab.train import CONF_MODULE


@pytest.fixture
def slurm_launcher(tmp_path, monkeypatch) -> SizedSlurmLauncher:
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=["experiment=smoke_sweep", "hydra/launcher=slurm",
                                              "hydra.launcher.partition=gpu", "hydra.launcher.account=scaling",
                                              f"hydra.sweep.dir={tmp_path}/multirun"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    return SizedSlurmLauncher(**params)


def sbatch(launcher: SizedSlurmLauncher, tier: int) -> dict[str, str]:
    """The #SBATCH options of one tier's script, as {option: value}."""
    slurm = launcher._executor(launcher.tiers[tier])._executor  # submitit's SlurmExecutor behind AutoExecutor
    text = slurm._make_submission_file_text("python -u job.py", "uid")
    options = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    return dict((o.split("=", 1) + [""])[:2] for o in options)


def test_each_tier_asks_for_its_resources_and_the_requeue_signal(slurm_launcher):
    small, medium, large = (sbatch(slurm_launcher, t) for t in range(3))
    for s in (small, medium, large):
        assert s["--partition"] == "gpu" and s["--account"] == "scaling" and s["--job-name"] == "lab-sweep"
        assert s["--signal"] == "USR2@120", "submitit's checkpoint-and-requeue signal, 2 minutes before the limit"
        assert s["--open-mode"] == "append", "a requeued job appends to its logs"
    assert (small["--time"], small["--gpus-per-node"], small["--cpus-per-task"], small["--mem"]) == \
        ("120", "1", "8", "32GB")
    assert (medium["--time"], medium["--cpus-per-task"], medium["--mem"]) == ("720", "16", "64GB")
    assert (large["--time"], large["--gpus-per-node"], large["--ntasks-per-node"], large["--mem"]) == \
        ("2880", "8", "8", "480GB"), "one task per GPU: Lightning requires trainer.devices = tasks per node"
    assert small["--ntasks-per-node"] == "1"
    assert "trainer.devices=8" in slurm_launcher.tiers[2]["overrides"]


def test_time_limit_requeues_are_allowed(slurm_launcher):
    assert slurm_launcher.params["max_num_timeout"] == 3
    slurm = slurm_launcher._executor(slurm_launcher.tiers[0])._executor
    assert slurm.max_num_timeout == 3
    assert Path(str(slurm.folder)).name == "%j"
