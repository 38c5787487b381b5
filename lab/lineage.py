"""Which data a run trained on, recorded as an MLflow dataset input and as params analysis can group by.

A law fitted across two corpora or two tokenizations mixes losses in different units; recording the data's digest
and its tokenizer's digest with every run lets ``analysis.lineage`` say so before a fit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from tracking.record import Param
from tracking.store import retrying

DATASET_CONTEXT = "training"
DATASET_RACE_TRIES = 5
"""Tries to record a dataset input that concurrent workers are inserting too (each try finds more rows)."""


@dataclass(frozen=True)
class DataLineage:
    name: str
    """``builtin:<corpus stem>`` or the lab-data manifest's name."""
    digest: str
    """The data's identity: the manifest's digest, or the built-in corpus's fingerprint (with the tokenizer's)."""
    source: str
    """Where it was read: the manifest path or the cache file."""
    tokenizer: str
    tokenizer_digest: str
    vocab_size: int

    def params(self) -> dict[str, Any]:
        return {Param.DATA_DIGEST: self.digest, Param.DATA_NAME: self.name,
                Param.TOKENIZER_DIGEST: self.tokenizer_digest}


def _lost_insert_race(err: BaseException) -> bool:
    import sqlalchemy.exc

    text = str(err).lower()
    return isinstance(err.__cause__, sqlalchemy.exc.IntegrityError) or "unique constraint" in text \
        or "duplicate key" in text


def record_data(client: Any, run_id: str, lineage: DataLineage) -> None:
    """Log ``lineage`` to the run as a training dataset input (MLflow ``log_inputs``) and as params."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.entities import Param as MlflowParam
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = Dataset(name=lineage.name, digest=lineage.digest[:36], source_type="local",
                      source=json.dumps({"uri": lineage.source}),
                      profile=json.dumps({"tokenizer": lineage.tokenizer, "tokenizer_digest": lineage.tokenizer_digest,
                                          "vocab_size": lineage.vocab_size, "digest": lineage.digest}))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])]
    for attempt in range(DATASET_RACE_TRIES):
        try:
            retrying(lambda: client.log_inputs(run_id, datasets=inputs), f"record the data input of run {run_id}",
                     "the tracking store")
            break
        except MlflowException as err:
            # Workers starting together insert the same dataset row at once; the loser gets a unique-key error
            # (a 400 from a SQL store, whatever it says through a server), and its next try finds the row.
            if attempt == DATASET_RACE_TRIES - 1 or not _lost_insert_race(err):
                raise
            time.sleep(0.05 * (attempt + 1))
    client.log_batch(run_id, params=[MlflowParam(k, str(v)) for k, v in lineage.params().items()])
