"""A store written by real lab-train runs, shared by the dashboard tests (trained once per session).

Sixteen tiny runs in-process (~60 s on one core): a size ladder (model.size 1-3 x two token budgets, design grid),
an lr x B sweep (design lr_batch) of 4 (N, D) cells (model.size 1-2 x the two budgets) with 3 configurations at the
smallest cell and 2 at the others, so the hyperparameter laws have >= 4 cells of >= 2 configurations, and one run
that diverges on purpose (trainer.max_loss) so status filters have a FAILED run to show; and a schedule study (design
schedule_study: cosine and constant fitted, WSD held out) for the Schedules page. The sweeps carry the design tag
that lab-sweep writes, so each law page selects its own sweep by default (analysis.points).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracking.record import Design, Role, Tag

SMOKE_TOKENS = (5120, 10240)  # 20 and 40 steps of 8 sequences x 32 tokens
LADDER = [(size, tokens) for size in (1, 2, 3) for tokens in SMOKE_TOKENS]
LR_BATCH = [(size, tokens, lr, b) for size in (1, 2) for tokens in SMOKE_TOKENS
            for lr, b in (("1e-2", 8), ("3e-3", 4))] + [(1, SMOKE_TOKENS[0], "1e-3", 8)]
SCHEDULE_STUDY = [("cosine", Role.FIT), ("constant", Role.FIT), ("wsd", Role.HELD_OUT)]


def train_store(workdir: Path) -> str:
    """Train the runs into workdir/mlflow.db and return its tracking URI."""
    from lab.run import train
    from lab.train import compose_config

    uri = f"sqlite:///{workdir}/mlflow.db"
    base = ["experiment=smoke", f"tracking.uri={uri}", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", "trainer.val_every_steps=5",
            "trainer.checkpoint_every_steps=1000", "trainer.threads=1"]
    design = f"+tracking.tags.{Tag.DESIGN}"
    plans = [[f"model.size={s}", f"budget.tokens={t}", "+tracking.tags.sweep=ladder", f"{design}={Design.GRID}"]
             for s, t in LADDER]
    # the schedule study before the lr x B sweep, so that one stays the most recent sweep (the Runs page's default)
    plans += [["model.size=1", f"budget.tokens={SMOKE_TOKENS[1]}", f"optim.schedule={name}", "+tracking.tags.sweep=sched",
               f"{design}={Design.SCHEDULES}", f"+tracking.tags.{Tag.SCHEDULE_NAME}={name}",
               f"+tracking.tags.{Tag.ROLE}={role}"] for name, role in SCHEDULE_STUDY]
    plans += [[f"model.size={s}", f"budget.tokens={t}", f"optim.lr={lr}", f"batch.sequences={b}",
               "+tracking.tags.sweep=lr_batch", f"{design}={Design.LR_BATCH}"] for s, t, lr, b in LR_BATCH]
    plans.append(["model.size=1", "trainer.max_loss=3.0", "+tracking.tags.sweep=diverged"])
    for overrides in plans:
        train(compose_config([*base, *overrides]))
    return uri


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return train_store(tmp_path_factory.mktemp("dashboard_store"))
