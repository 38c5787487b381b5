"""Which recorded runs are points of a loss or hyperparameter law.

A critical-batch-size branch (tag ``branch_of``, lab/init.py) continues another run's checkpoint at another batch
for a short window: its final loss belongs to the reference's trajectory, not to a run of its own trained from
initialisation to D tokens at one batch and lr, so it is no (N, D) point. `lab-fit cbs` and the dashboard's
critical-batch-size page read those runs; the loss and hyperparameter laws leave them out.
"""

from __future__ import annotations

import polars as pl

BRANCH_OF = "tag.branch_of"
"""Column of the runs frame (analysis.load.load_runs) naming the reference run a branch continues."""


def from_scratch(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs trained from initialisation: every run but the CBS branches."""
    if BRANCH_OF not in runs.columns:
        return runs
    return runs.filter(pl.col(BRANCH_OF).is_null())
