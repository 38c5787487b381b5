"""Submitit launchers whose resources follow model size: one job array per size tier, all submitted at once.

Hydra's submitit launcher gives every job of a sweep the same resources. A scaling sweep spans 100x in N, so here
each job's non-embedding N is computed from its composed config (sweeps.designs.rung, no torch model built), the
first tier with N <= max_N gives its timeout, CPUs, GPUs, memory and extra overrides (e.g. trainer=gpu), and the
job runs with trainer.threads = cpus_per_task. Works for any multirun of the training config, not only designs.

Preemption and time limits: a job's run that receives SIGTERM or submitit's signal (USR2, sent by SLURM before the
time limit, and on preemption where the cluster sets preempt_send_user_signal) saves a checkpoint at that step and
ends KILLED (lab.preemption); the job then asks submitit to requeue it (submitit's own signal handler, which calls
``checkpoint``), and the requeued job continues the same MLflow run with ``resume=true``. A job that SLURM requeues
by itself (node failure; no signal reached the run) continues from the run's last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class SizedSubmititLauncher(BaseSubmititLauncher):
    def __init__(self, tiers: Any = (), **params: Any) -> None:
        super().__init__(**params)
        self._preempted = False
        """Set in the job's process when its run stopped at a checkpoint on a preemption signal."""
        self.tiers = [OmegaConf.to_container(t, resolve=True) if OmegaConf.is_config(t) else dict(t)
                      for t in tiers]
        if not self.tiers or self.tiers[-1].get("max_N") is not None:
            raise ValueError(f"hydra.launcher.tiers={self.tiers}: give tiers in increasing max_N, the last with "
                             "max_N: null so that every model size has resources")

    def tier_of(self, overrides: Sequence[str]) -> tuple[int, float]:
        """(index of the tier, N) of the job with these overrides."""
        from lab.config import ModelConfig
        from sweeps.designs import rung

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        model = OmegaConf.to_object(cfg.model)
        assert isinstance(model, ModelConfig)
        N = rung(model).N
        return next(i for i, t in enumerate(self.tiers) if t.get("max_N") is None or N <= float(t["max_N"])), N

    def __call__(self, sweep_overrides: list[str], *args: Any) -> JobReturn:
        """One job, in its submitit process; a preempted run has the job requeued (module docstring)."""
        from lab.preemption import Preempted, submitit_signal

        sweep_overrides = self.resume_after_requeue(sweep_overrides)
        try:
            return super().__call__(sweep_overrides, *args)
        except Preempted as stop:
            requeue = signal.getsignal(submitit_signal())
            if not callable(requeue):  # no submitit handler in this process: nothing can requeue the job
                raise
            log.warning("%s; asking submitit to requeue this job", stop)
            self._preempted = True
            # submitit's handler calls checkpoint(), stores the resubmission, requeues the job and exits; it returns
            # only on tasks other than the first, which end with the run's exception.
            signal.raise_signal(submitit_signal())
            raise

    def resume_after_requeue(self, sweep_overrides: list[str]) -> list[str]:
        """A job SLURM requeued by itself reruns with its first overrides: continue its run from its checkpoint
        (sweeps.runs.resume_after_requeue)."""
        from sweeps.runs import resume_after_requeue

        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts < 1:
            return sweep_overrides
        assert self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        resumed = resume_after_requeue(sweep_overrides, cfg, restarts)
        if resumed != list(sweep_overrides):
            log.warning("SLURM requeued this job (restart %d): run %s resumes from its last checkpoint", restarts,
                        cfg.tracking.run_name)
        elif not cfg.tracking.run_name:
            log.warning("SLURM requeued this job, but its run has no tracking.run_name to find a checkpoint by: "
                        "it starts afresh (sweep designs name every run)")
        return resumed

    def checkpoint(self, sweep_overrides: list[str], *args: Any) -> Any:
        """submitit's requeue hook: the same job again, continuing its run (resume=true) when it was preempted."""
        from sweeps.runs import override_key

        if self._preempted:
            sweep_overrides = [*(o for o in sweep_overrides if override_key(o) != "resume"), "resume=true"]
            self._preempted = False  # the resubmission pickles this launcher
        return super().checkpoint(sweep_overrides, *args)

    def _executor(self, tier: dict[str, Any]) -> Any:
        """A submitit executor for one tier: the launcher's parameters with the tier's resources on top."""
        import submitit

        params = {**self.params, **{k: v for k, v in tier.items() if k not in ("max_N", "overrides") and v is not None}}
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=params["submitit_folder"],
            **({f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}))
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        return executor

    @staticmethod
    @contextlib.contextmanager
    def _threads_env(cpus: Optional[int]) -> Iterator[None]:
        """Local jobs and sbatch (--export=ALL) inherit this environment: one OpenMP thread per allotted CPU."""
        saved = os.environ.get("OMP_NUM_THREADS")
        if cpus:
            os.environ["OMP_NUM_THREADS"] = str(cpus)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[int, list[int]] = {}
        jobs_overrides = []
        for i, overrides in enumerate(job_overrides):
            t, N = self.tier_of(overrides)
            tier = self.tiers[t]
            extra = list(tier.get("overrides") or [])
            if tier.get("cpus_per_task") and not any(o.startswith("trainer.threads=") for o in overrides):
                extra.append(f"trainer.threads={tier['cpus_per_task']}")
            jobs_overrides.append([*overrides, *extra])
            groups.setdefault(t, []).append(i)
            log.info("\t#%d (N=%.3g, tier %d) : %s", initial_job_idx + i, N, t,
                     " ".join(filter_overrides(jobs_overrides[-1])))
        submitted: dict[int, Any] = {}
        for t, indices in groups.items():  # submit every tier before waiting on any
            executor = self._executor(self.tiers[t])
            args = [(jobs_overrides[i], "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                     Singleton.get_state()) for i in indices]
            with self._threads_env(self.tiers[t].get("cpus_per_task")):
                for i, job in zip(indices, executor.map_array(self, *zip(*args))):
                    submitted[i] = job
        returns = []
        for i in range(len(job_overrides)):
            try:
                returns.append(submitted[i].results()[0])
            except Exception as err:  # noqa: BLE001 - a job that died (killed, out of memory) fails alone
                ret = JobReturn(overrides=jobs_overrides[i], status=JobStatus.FAILED)
                ret.return_value = err
                returns.append(ret)
        return returns


class SizedSlurmLauncher(SizedSubmititLauncher):
    _EXECUTOR = "slurm"


class SizedLocalLauncher(SizedSubmititLauncher):
    _EXECUTOR = "local"
