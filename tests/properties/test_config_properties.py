"""Property tests over lab-train overrides: any mix of good and bad values is either a run that can start or a
clear error naming the field, and a rejected config records nothing (design §8).

The in-process property runs the same two gates ``lab-train`` runs before it touches a store (compose + typed
validation, then ``lab.run.prepare``); a smaller sample goes through the ``lab-train`` command itself and checks
the exit status, the message and that no MLflow store, run or checkpoint was created.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from lab.config import BATCH_SCHEDULES, LR_RESCALE_RULES, LR_SCHEDULES, STRATEGIES
from lab.run import prepare
from lab.train import compose_config

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")

# field -> values a user might type: valid ones, out-of-range ones, wrong types and unknown choices.
FIELDS: dict[str, st.SearchStrategy] = {
    "model.size": st.sampled_from(["-1", "0", "1", "2", "null", "two"]),
    "model.seq_len": st.sampled_from(["-8", "0", "1", "16", "32", "1e3x"]),
    "model.vocab_size": st.sampled_from(["256", "100", "0"]),
    "model.mlp": st.sampled_from(["swiglu", "gelu", "relu"]),
    "optim.lr": st.sampled_from(["-1e-3", "0", "3e-3", "1.0", "nan", "fast"]),
    "optim.schedule": st.sampled_from([*LR_SCHEDULES, "cosinus"]),
    "optim.warmup_fraction": st.sampled_from(["-0.1", "0", "0.05", "1", "1.5"]),
    "optim.min_lr_ratio": st.sampled_from(["-1", "0", "0.1", "2"]),
    "optim.decay_fraction": st.sampled_from(["0", "0.2", "1", "3"]),
    "optim.beta2": st.sampled_from(["0.95", "1", "-0.1"]),
    "batch.sequences": st.sampled_from(["-8", "0", "3", "8", "16"]),
    "batch.micro_batch": st.sampled_from(["0", "1", "4", "5"]),
    "batch.schedule": st.sampled_from([*BATCH_SCHEDULES, "exponential"]),
    "batch.lr_rescale": st.sampled_from([*LR_RESCALE_RULES, "cubic"]),
    "budget.tokens": st.sampled_from(["-1", "0", "10", "6400", "1.28e4", "null"]),
    "budget.flops": st.sampled_from(["-5", "1e3", "1e9", "null"]),
    "trainer.strategy": st.sampled_from([*STRATEGIES, "horovod"]),
    "trainer.val_every_steps": st.sampled_from(["0", "1", "25"]),
    "trainer.checkpoint_every_steps": st.sampled_from(["-1", "25"]),
    "trainer.max_loss": st.sampled_from(["0", "20"]),
    "trainer.fused_ce_chunk": st.sampled_from(["0", "64", "null"]),
    "trainer.compile_mode": st.sampled_from(["default", "turbo", "null"]),
    "data.source": st.sampled_from(["builtin", "tokens", "web"]),
    "data.val_sequences": st.sampled_from(["0", "4"]),
}

overrides_strategy = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.just(None), min_size=1, max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({k: FIELDS[k] for k in chosen}))

# Errors the gates may raise: Hydra/OmegaConf for a wrong type or unknown key at compose time, ValueError
# (lab.config.ConfigError and the checks in prepare) for a value that cannot run. Anything else is a bug.
CLEAR_ERRORS = (HydraException, OmegaConfBaseException, ValueError)


def fields_named(message: str, chosen: dict[str, str]) -> bool:
    """The message names one of the overridden fields (or its group: budget errors name 'budget')."""
    names = set(chosen) | {k.split(".")[0] for k in chosen} | {k.split(".")[-1] for k in chosen}
    return any(n in message for n in names)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("props")
    prepare(compose_config(["experiment=smoke", f"data.cache_dir={work}/cache"]))  # the corpus, built once
    return work


def base(work: Path) -> list[str]:
    return ["experiment=smoke", f"tracking.uri=sqlite:///{work}/mlflow.db", f"checkpoint_dir={work}/ckpt",
            f"data.cache_dir={work}/cache", "trainer.progress_bar=false"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=overrides_strategy)
def test_any_override_mix_runs_or_fails_clearly_before_recording(workdir, chosen):
    overrides = [*base(workdir), *(f"{k}={v}" for k, v in chosen.items())]
    try:
        prepared = prepare(compose_config(overrides))
    except CLEAR_ERRORS as err:
        message = str(err)
        assert fields_named(message, chosen), f"{type(err).__name__} does not name the field: {message}"
        assert len(message) < 3000
    else:
        cfg = prepared.cfg
        tokens_per_step = cfg.batch.sequences * cfg.model.seq_len
        assert prepared.D >= tokens_per_step and prepared.N > 0
        assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
        assert cfg.batch.sequences % cfg.batch.micro_batch == 0
    assert not (workdir / "mlflow.db").exists(), "validation must not create the store"
    assert not (workdir / "ckpt").exists(), "validation must not create checkpoints"


REJECTED = [
    {"optim.lr": "-1e-3", "batch.sequences": "16"},
    {"batch.micro_batch": "5"},
    {"budget.tokens": "10"},
    {"optim.schedule": "cosinus", "model.size": "2"},
    {"model.seq_len": "1e3x"},
    {"trainer.strategy": "horovod"},
]


@pytest.mark.parametrize("chosen", REJECTED, ids=lambda c: ",".join(c))
def test_lab_train_rejects_with_a_message_and_records_nothing(tmp_path, workdir, chosen):
    overrides = [*base(tmp_path), f"data.cache_dir={workdir}/cache", *(f"{k}={v}" for k, v in chosen.items())]
    proc = subprocess.run([LAB_TRAIN, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert fields_named(proc.stderr, chosen), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, "a config mistake is a message, not a stack trace"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ckpt").exists()
    assert not (tmp_path / "mlruns").exists()
