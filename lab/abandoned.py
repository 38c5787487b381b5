"""A run killed before its first checkpoint stays RUNNING in MLflow forever: nothing can resume it (no last.ckpt)
and no process will end it. The next fresh launch of the same run name, which takes over its checkpoint directory,
ends it KILLED with the reason, so the record says what happened.

Only the run that the directory's run record names is touched, and only while it is RUNNING without a checkpoint:
a run that left a checkpoint is resumed (resume=true), not closed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from tracking.record import Checkpoint, FailureKind, Tag

log = logging.getLogger(__name__)


def close_abandoned(tracking_uri: str, ckpt_dir: Path) -> Optional[str]:
    """End the run recorded in ``ckpt_dir`` KILLED when it is RUNNING and left no checkpoint; its id, else None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    record, last = ckpt_dir / Checkpoint.RUN_RECORD, ckpt_dir / Checkpoint.LAST
    if not record.exists() or last.exists():
        return None
    run_id = json.loads(record.read_text()).get("run_id")
    if not run_id:
        return None
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:  # another store (a deleted mlflow.db): nothing to close there
        return None
    if run.info.status != "RUNNING":
        return None
    client.set_tag(run_id, Tag.STATUS_KIND, FailureKind.INTERRUPTED)
    client.set_tag(run_id, Tag.STATUS_REASON, "ended before its first checkpoint (no process left, nothing to "
                   "resume); closed KILLED by the next launch of the same run name")
    client.set_terminated(run_id, "KILLED")
    log.warning("run %s (%s) was RUNNING without a checkpoint: marked KILLED", run_id, ckpt_dir.name)
    return run_id
