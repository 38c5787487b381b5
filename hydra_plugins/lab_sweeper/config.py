"""Config schemas of the sweep plugins, registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins``.

- ``hydra/sweeper=design`` (DesignSweeper): runs a design from ``sweeps.designs``; the ``sweep/`` config group
  (conf/sweep/*.yaml, package ``hydra.sweeper``) fills in ``design``.
- ``sized_slurm_schema`` / ``sized_local_schema``: submitit launchers whose resources follow model size; the
  launcher choices ``hydra/launcher=slurm`` and ``hydra/launcher=slurm_local`` (conf/hydra/launcher/) extend them
  with their tiers.

The dataclasses live in ``_schema`` (see there why); nothing heavy may load here: Hydra imports every plugin module
at start-up.
"""


from hydra.core.config_store import ConfigStore
from hydra_plugins.lab_sweeper._schema import DesignSweeperConf, SizedLocalConf, SizedSlurmConf, SizeTier

__all__ = ["DesignSweeperConf", "SizeTier", "SizedLocalConf", "SizedSlurmConf", "register"]


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="design", node=DesignSweeperConf, provider="lab_sweeper")
    cs.store(group="hydra/launcher", name="sized_slurm_schema", node=SizedSlurmConf, provider="lab_sweeper")
    cs.store(group="hydra/launcher", name="sized_local_schema", node=SizedLocalConf, provider="lab_sweeper")


register()
