"""A store written by real lab-train runs, shared by the dashboard tests (trained once per session).

Ten tiny runs in-process (~40 s on one core): a size ladder (model.size 1-3 x two token budgets), an lr x B
patch at the smallest cell so the hyperparameter page has a landscape and >= 4 (N, D) cells, and one run that
diverges on purpose (trainer.max_loss) so status filters have a FAILED run to show.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOKE_TOKENS = (5120, 10240)  # 20 and 40 steps of 8 sequences x 32 tokens
LADDER = [(size, tokens) for size in (1, 2, 3) for tokens in SMOKE_TOKENS]
LR_BATCH = [("1e-3", 8), ("1e-2", 8), ("3e-3", 4)]  # plus the ladder's (3e-3, 8) at size 1, 5120 tokens


def train_store(workdir: Path) -> str:
    """Train the runs into workdir/mlflow.db and return its tracking URI."""
    from lab.run import train
    from lab.train import compose_config

    uri = f"sqlite:///{workdir}/mlflow.db"
    base = ["experiment=smoke", f"tracking.uri={uri}", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", "trainer.val_every_steps=5",
            "trainer.checkpoint_every_steps=1000", "trainer.threads=1"]
    plans = [[f"model.size={s}", f"budget.tokens={t}", "+tracking.tags.sweep=ladder"] for s, t in LADDER]
    plans += [["model.size=1", f"budget.tokens={SMOKE_TOKENS[0]}", f"optim.lr={lr}", f"batch.sequences={b}",
               "+tracking.tags.sweep=lr_batch"] for lr, b in LR_BATCH]
    plans.append(["model.size=1", "trainer.max_loss=3.0", "+tracking.tags.sweep=diverged"])
    for overrides in plans:
        train(compose_config([*base, *overrides]))
    return uri


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return train_store(tmp_path_factory.mktemp("dashboard_store"))
