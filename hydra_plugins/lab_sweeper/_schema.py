"""Config schemas of the sweep plugins (registered by ``config.py``).

They live in a module whose name starts with "_" because Hydra's plugin scan skips such modules. The scan runs again
inside every submitit job (``Singleton.set_state``) and re-executes every other module of ``hydra_plugins`` in place,
which replaces its classes with new ones. A job's pickled config still refers to the classes it was built with, so
when a preempted job is requeued (submitit pickles the launcher and its config again) cloudpickle would copy those
classes by value, and a copied dataclass loses the identity of ``dataclasses.MISSING`` in its fields: the requeued job
then fails to compose its config (``_MISSING_TYPE is not a ListConfig``). Classes defined here are never replaced, so
they pickle by reference.

Only dataclasses here: Hydra imports the plugin modules at every start-up, so nothing heavy may load at import.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    tasks_per_node: Optional[int] = None
    """Processes per node (None: 1). Several GPUs per node under SLURM: one task per GPU, and the run's
    trainer.devices equal to it (Lightning's SLURM environment checks that they match)."""
    mem_gb: Optional[int] = None
    """Per node."""
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
