"""Config schemas of the sweep plugins, registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins``.

- ``hydra/sweeper=design`` (DesignSweeper): runs a design from ``sweeps.designs``; the ``sweep/`` config group
  (conf/sweep/*.yaml, package ``hydra.sweeper``) fills in ``design``.
- ``sized_slurm_schema`` / ``sized_local_schema``: submitit launchers whose resources follow model size; the
  launcher choices ``hydra/launcher=slurm`` and ``hydra/launcher=slurm_local`` (conf/hydra/launcher/) extend them
  with their tiers.

Only dataclasses here: Hydra imports every plugin module at start-up, so nothing heavy may load at import.
"""


from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf


@dataclass
class DesignSweeperConf:
    _target_: str = "hydra_plugins.lab_sweeper.design_sweeper.DesignSweeper"
    design: Dict[str, Any] = field(default_factory=dict)
    """name: grid | isoflop | lr_batch, sizes: [model.size dials], and the generator's parameters."""
    id: Optional[str] = None
    """Sweep id; None: <design name>-<hash of the design and the command line>, so a re-run is the same sweep."""
    resume: bool = True
    """Resume an interrupted run from its checkpoint (else a leftover starts afresh)."""
    threads: Optional[int] = None
    """torch threads per job; None: 1 per core a parallel joblib worker owns, unset for the basic launcher."""
    max_batch_size: Optional[int] = None
    """Jobs handed to the launcher at once; None: all. A crashed worker costs at most one batch's bookkeeping."""
    stale_after_s: float = 300.0
    """A RUNNING run silent (no metric) for this long counts as interrupted and is run again; one that logged more
    recently may still be training elsewhere (a SLURM job outlives a killed lab-sweep) and is left alone."""


@dataclass
class SizeTier:
    """Resources of the runs whose non-embedding N is at most max_N (the first matching tier wins)."""

    max_N: Optional[float] = None
    """Upper bound on N (parameters) for this tier; None: no bound (the last tier)."""
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None
    """Also the run's torch threads (trainer.threads) and OMP_NUM_THREADS."""
    gpus_per_node: Optional[int] = None
    mem_gb: Optional[int] = None
    overrides: List[str] = field(default_factory=list)
    """Extra job overrides for this tier, e.g. [trainer=gpu, trainer.devices=4]."""


@dataclass
class SizedSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.lab_sweeper.sized_submitit.SizedSlurmLauncher"
    tiers: List[SizeTier] = field(default_factory=list)


@dataclass
class SizedLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.lab_sweeper.sized_submitit.SizedLocalLauncher"
    tiers: List[SizeTier] = field(default_factory=list)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="design", node=DesignSweeperConf, provider="lab_sweeper")
    cs.store(group="hydra/launcher", name="sized_slurm_schema", node=SizedSlurmConf, provider="lab_sweeper")
    cs.store(group="hydra/launcher", name="sized_local_schema", node=SizedLocalConf, provider="lab_sweeper")


register()
