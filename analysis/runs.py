"""Which recorded runs are points of a loss or hyperparameter law.

A critical-batch-size branch (tag ``branch_of``, lab/init.py) continues another run's checkpoint at another batch
for a short window: its final loss belongs to the reference's trajectory, not to a run of its own trained from
initialisation to D tokens at one batch and lr, so it is no (N, D) point. `lab-fit cbs` and the dashboard's
critical-batch-size page read those runs; the loss and hyperparameter laws leave them out.
"""

from __future__ import annotations

import polars as pl

BRANCH_TAG, CHECKPOINT_TAG = "branch_of", "checkpoint_tokens"
"""Tags lab-train gives a branch: the reference run it continues, and the tokens of that checkpoint."""
BRANCH_OF = f"tag.{BRANCH_TAG}"
"""Column of the runs frame (analysis.load.load_runs) naming the reference run a branch continues."""
REFERENCE_B = "param.branch.B_ref_tokens"
"""Column of the runs frame holding the reference run's batch (tokens), a param of every branch."""


def from_scratch(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs trained from initialisation: every run but the CBS branches."""
    if BRANCH_OF not in runs.columns:
        return runs
    return runs.filter(pl.col(BRANCH_OF).is_null())


def recorded_reference_B(values: pl.Series) -> float | None:
    """The reference run's batch (tokens) as the branches record it, when they agree on one; None otherwise."""
    found = values.cast(pl.Float64, strict=False).drop_nulls().unique().to_list()
    return found[0] if len(found) == 1 else None
