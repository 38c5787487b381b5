"""`lab-sweep`: run a design of training runs as a Hydra multirun, every run a child of the sweep's MLflow run.

    lab-sweep experiment=smoke_sweep                                   # 2 budgets x 2 sizes, in this process
    lab-sweep sweep=isoflop hydra/launcher=joblib hydra.launcher.n_jobs=2
    lab-sweep sweep=isoflop hydra.sweeper.design.budgets=[1e12,3e12,1e13] hydra.sweeper.design.k=3
    lab-sweep sweep=grid hydra/launcher=slurm hydra.launcher.partition=gpu
    lab-sweep sweep=isoflop hydra.sweeper.id=my-sweep     # name the sweep; re-run the command to finish it
    lab-sweep sweep=cbs hydra.sweeper.id=cbs-1            # a reference run, then branches from its checkpoints

The config is lab-train's (conf/train.yaml) under conf/lab_sweep.yaml, which selects the DesignSweeper
(hydra_plugins/lab_sweeper); every other argument is a lab-train override applied to all runs. Multirun mode is
implied. In-process callers (the demo, notebooks, tests) use `run_sweep`, which returns a `SweepSummary`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

import hydra
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lab.train import CONF_MODULE, CONF_PATH, to_config
from sweeps.runs import SweepSummary

CONFIG_NAME = "lab_sweep"
log = logging.getLogger(__name__)


class SweepJobError(RuntimeError):
    """A run of a sweep raised; carries ``<type>: <message>`` of the original error (its traceback is in the job's
    log). A plain type, so that it crosses from worker processes to the sweeper intact."""


def task(cfg: DictConfig) -> dict[str, Any]:
    """One run of a sweep: lab-train's logic (validate, prepare, train, record), returning lab.run.RunResult as a
    dict. A diverged run returns normally with status FAILED; any error raises SweepJobError, which the sweeper
    records before it goes on. Unlike lab-train this never exits the process, which other runs may share."""
    try:
        typed = to_config(cfg)
        from lab.run import quiet_lightning, train  # loaded once per process; later runs reuse it

        quiet_lightning()
        result = train(typed)
    except Exception as err:
        log.exception("run %s failed", cfg.tracking.run_name)
        raise SweepJobError(f"{type(err).__name__}: {err}") from None
    print(f"{result.status}: run {result.run_name} ({result.run_id}) N={result.N:,} D={result.D:,} "
          f"C={result.C:.3g} val/loss={result.final_val_loss:.4f}", flush=True)
    return dataclasses.asdict(result)


app = hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=CONFIG_NAME)(task)


def main() -> None:
    """The console script: lab-train's config and overrides, always in multirun mode, through the DesignSweeper."""
    if not {"-m", "--multirun"} & set(sys.argv[1:]):
        sys.argv.insert(1, "--multirun")
    app()


def run_sweep(overrides: Sequence[str] = ()) -> SweepSummary:
    """What ``lab-sweep <overrides>`` does, in this process, returning the sweep's summary.

    e.g. ``run_sweep(["experiment=smoke_sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])``. With the
    basic launcher the runs execute in this process one after the other.
    """
    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("run_sweep: Hydra is already initialized in this process (inside a Hydra app or an "
                           "initialize() block); call it from plain Python code")
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3", job_name="lab_sweep"):
        summary = GlobalHydra.instance().hydra.multirun(
            config_name=CONFIG_NAME, task_function=task, overrides=list(overrides))
    assert isinstance(summary, SweepSummary)
    return summary


if __name__ == "__main__":
    main()
