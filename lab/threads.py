"""How many torch intra-op threads a training process takes when trainer.threads is not set.

torch's default is every core, which is right only on an otherwise idle machine: two trainings side by side with
default threads ran 10x slower than with one thread each (environment.md). So the default is the cores this
process may use, shared among the local workers (the ranks of this node), and no more than the cores the
machine's recent load leaves idle, never fewer than 1. A launcher that sized its workers already (lab-sweep's
joblib / submitit workers set OMP_NUM_THREADS) is followed as it is.
"""

from __future__ import annotations

import os
from typing import Optional


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_workers(devices: int, env: Optional[dict[str, str]] = None) -> int:
    """Processes training on this node: the launcher's LOCAL_WORLD_SIZE (torchrun, Lightning) or the devices."""
    value = (os.environ if env is None else env).get("LOCAL_WORLD_SIZE", "")
    return max(1, int(value) if value.isdigit() else devices)


def default_threads(devices: int = 1, cores: Optional[int] = None, load: Optional[float] = None,
                    env: Optional[dict[str, str]] = None) -> int:
    """Threads for one training process: OMP_NUM_THREADS when a launcher set it, else
    min(cores // local workers, cores idle under the 1-minute load average), at least 1."""
    env = os.environ if env is None else env
    preset = env.get("OMP_NUM_THREADS", "")
    if preset.isdigit() and int(preset) > 0:
        return int(preset)
    cores = usable_cores() if cores is None else cores
    share = max(1, cores // local_workers(devices, env))
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = max(1, int(cores - load + 0.5))
    return max(1, min(share, idle))
