"""DesignSweeper: a Hydra Sweeper that runs a design of `sweeps.designs` through any Hydra launcher.

``lab-sweep sweep=isoflop hydra/launcher=joblib hydra.launcher.n_jobs=2`` composes the training config, expands the
design into runs, and hands their override lists to the configured launcher: basic (in-process, one after the
other: torch, Lightning and MLflow load once), joblib (local worker processes, reused between jobs), or submitit
(``slurm``, ``slurm_local``). Around the launcher, ``sweeps.orchestrate.run_design`` does what a sweep needs and a
launcher does not know about:

1. validate every run's config (composition and the schema's rules) before anything is recorded;
2. create the MLflow store once, then the sweep's parent run (or find it again by sweep id);
3. skip runs already FINISHED, resume interrupted ones from their checkpoints (sweeps.runs.plan_jobs);
4. give each job one thread per core it owns when jobs run in parallel;
5. record what each job became (a raising job or a crashed launcher batch does not stop the sweep), end the
   parent with the counts as tags, print a table, and return a `sweeps.runs.SweepSummary`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:  # sweeps loads lazily: Hydra imports this module at every start-up
    from sweeps.runs import SweepSummary

log = logging.getLogger(__name__)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class DesignSweeper(Sweeper):
    def __init__(self, design: Any, id: Optional[str] = None, resume: bool = True, threads: Optional[int] = None,
                 max_batch_size: Optional[int] = None, stale_after_s: float = 300.0) -> None:
        super().__init__()
        self.stale_after_s = stale_after_s
        self.design = OmegaConf.to_container(design, resolve=True) if OmegaConf.is_config(design) else dict(design)
        self.id = id
        self.resume = resume
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------------ helpers

    def _task_config(self, overrides: Sequence[str]) -> Any:
        """The typed training config one job would get (lab.train.to_config): composition and schema rules."""
        from lab.train import to_config

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return to_config(cfg)

    def _job_threads(self, n_jobs: int) -> Optional[int]:
        """Torch threads per job, so that parallel jobs never oversubscribe the cores: the configured number, else
        the cores a joblib worker or a job of submitit's local executor (all jobs at once) owns, else the SLURM
        cpus_per_task. None for the basic launcher (its runs share this process one after the other) and for the
        size-tiered submitit launchers (each tier sets its own)."""
        if self.threads is not None:
            return self.threads
        launcher = self.config.hydra.launcher
        target = str(launcher.get("_target_", ""))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if "lab_sweeper" in target or "BasicLauncher" in target:
            return None
        if "JoblibLauncher" in target:
            workers = int(launcher.get("n_jobs", -1) or 1)
            workers = workers if workers > 0 else max(cpus + 1 + workers, 1)  # joblib: -1 all cores, -2 all but one
            return max(1, cpus // min(workers, max(n_jobs, 1)))
        if target.endswith("LocalLauncher"):
            return max(1, cpus // max(n_jobs, 1))
        cpus_per_task = launcher.get("cpus_per_task")
        return int(cpus_per_task) if cpus_per_task else None

    @staticmethod
    @contextlib.contextmanager
    def _thread_env(threads: Optional[int]) -> Iterator[None]:
        """OMP_NUM_THREADS for worker processes started during the launch (loky and submitit copy os.environ)."""
        saved = {k: os.environ.get(k) for k in THREAD_VARS}
        if threads is not None:
            os.environ.update({k: str(threads) for k in THREAD_VARS})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ---------------------------------------------------------------------------------------------------- sweep

    def sweep(self, arguments: list[str]) -> SweepSummary:
        from sweeps.catalog import expand
        from sweeps.orchestrate import SweepSettings, run_design
        from sweeps.runs import SweepError

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for o in parser.parse_overrides(list(arguments)):
            if o.is_sweep_override():
                raise SweepError(f"override {o.input_line!r}: lab-sweep takes its runs from the design; change the "
                                 "design's parameters (hydra.sweeper.design.*), or use lab-train -m for ad-hoc sweeps")
        specs = expand(self.design, OmegaConf.to_object(self.config.model), OmegaConf.to_object(self.config.batch))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        settings = SweepSettings(tracking_uri=self.config.tracking.uri, experiment=self.config.tracking.experiment,
                                 checkpoint_dir=str(self.config.checkpoint_dir), sweep_id=self.id,
                                 resume=self.resume, stale_after_s=self.stale_after_s,
                                 max_batch_size=self.max_batch_size)
        threads: dict[str, Optional[int]] = {}

        def job_threads(n_jobs: int) -> Optional[int]:
            threads["n"] = self._job_threads(n_jobs)
            return threads["n"]

        def launch(overrides: list[list[str]], start: int) -> list[Any]:
            with self._thread_env(threads.get("n")):
                returns: Sequence[JobReturn] = self.launcher.launch(overrides, initial_job_idx=start)
            # JobReturn.return_value would re-raise a failed job's exception: hand it over instead.
            return [r.return_value if r.status == JobStatus.COMPLETED else r._return_value for r in returns]

        return run_design(self.design, specs, list(arguments), settings, self._task_config, launch, job_threads)
