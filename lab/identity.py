"""A run's identity: every setting that changes its trajectory, as a digest, and the checkpoint directory it owns.

The identity is a digest of the same settings a resume compares (``trajectory_params``: model, data, optim, batch,
budget, init and seed, less where the corpus cache lives and how a batch splits into micro-batches). The default
run name keeps its readable prefix (N, D, B, lr, seed) and ends in the first 8 hex digits of it, so two runs that
differ in anything else (an optimizer schedule, muP, an init) never share a name nor a checkpoint directory
(``tracking.record.Checkpoint.run_dir``). ``run.json`` in that directory records which run owns it: a fresh launch
into a directory that a run of other settings owns refuses, and a resume checks that nothing changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from lab.config import ConfigError, TrainConfig
from tracking.record import Checkpoint

TRAJECTORY_SECTIONS = ("model.", "data.", "optim.", "batch.", "budget.", "init.", "seed")
RESUME_MAY_CHANGE = frozenset({"data.cache_dir", "batch.micro_batch"})
"""Where the corpus cache lives and how a batch is split into micro-batches may differ between launches (another
node, fewer devices); everything else in TRAJECTORY_SECTIONS decides what the run trains."""
DIGEST_CHARS = 8


def flat_params(cfg: TrainConfig) -> dict[str, Any]:
    """The config as MLflow params: dotted keys, leaf values."""
    def walk(prefix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(walk(f"{prefix}.{k}" if prefix else str(k), v))
            return out
        return {prefix: node}

    return walk("", dataclasses.asdict(cfg))


def trajectory_params(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its first launch, as run.json keeps them (JSON values)."""
    kept = {k: v for k, v in flat_params(cfg).items()
            if k.startswith(TRAJECTORY_SECTIONS) and k not in RESUME_MAY_CHANGE}
    return json.loads(json.dumps(kept))


def digest(params: dict[str, Any]) -> str:
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def run_identity(cfg: TrainConfig) -> str:
    """8 hex digits that change with every setting of ``trajectory_params`` and with nothing else."""
    return digest(trajectory_params(cfg))


def default_run_name(N: int, D: int, cfg: TrainConfig) -> str:
    """``N…-D…-B…-lr…-s<seed>-<identity>``: readable, deterministic (a sweep finds its runs again), and unique to
    the run's settings."""
    B = cfg.batch.sequences * cfg.model.seq_len
    prefix = f"N{N:.3g}-D{D:.3g}-B{B}-lr{cfg.optim.lr:g}-s{cfg.seed}".replace("+", "")
    return f"{prefix}-{run_identity(cfg)}"


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))


def _shown(recorded: dict[str, Any], now: dict[str, Any], differ: list[str], then: str) -> str:
    shown = ", ".join(f"{k}: {recorded.get(k)!r} {then}, {now.get(k)!r} now" for k in differ[:5])
    return shown + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")


def read_record(ckpt_dir: Path) -> Optional[dict[str, Any]]:
    """The run.json of a checkpoint directory, or None when there is none."""
    path = ckpt_dir / Checkpoint.RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(ckpt_dir: Path, run_id: str, run_name: str, cfg: TrainConfig) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "run_name": run_name, "identity": run_identity(cfg),
              "params": trajectory_params(cfg)}
    (ckpt_dir / Checkpoint.RUN_RECORD).write_text(json.dumps(record))


def check_resume_matches(meta: dict[str, Any], cfg: TrainConfig, ckpt_dir: Path) -> None:
    """A resume continues the checkpointed run's plan: a launch with other settings would silently train another
    one into the same MLflow run. run.json files written before the check existed carry no params: not checked."""
    recorded = meta.get("params")
    if recorded is None:
        return
    now = trajectory_params(cfg)
    differ = _differences(recorded, now)
    if differ:
        raise ConfigError(differ[0], now.get(differ[0]),
                          f"resume=true continues run {meta.get('run_name', meta['run_id'])} ({ckpt_dir}), which "
                          f"was started with other settings ({_shown(recorded, now, differ, 'at the first launch')}"
                          "); resume with the first launch's overrides, or start a new run (drop resume=true or "
                          "give another tracking.run_name)")


def check_fresh_launch(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """A fresh launch (not resume=true) may reuse a directory only of a run with the same settings (the same run
    started over); a directory that a run of other settings owns is refused, so no run overwrites another's
    checkpoints."""
    meta = read_record(ckpt_dir)
    if meta is None or meta.get("params") is None:
        return
    now = trajectory_params(cfg)
    differ = _differences(meta["params"], now)
    if differ:
        raise ConfigError(
            "tracking.run_name", cfg.tracking.run_name,
            f"the checkpoint directory {ckpt_dir} belongs to run {meta.get('run_name')} ({meta.get('run_id')}), "
            f"trained with other settings ({_shown(meta['params'], now, differ, 'there')}); give this run another "
            "tracking.run_name (or leave it unset for a name unique to its settings), another checkpoint_dir or "
            "tracking.experiment, or delete that directory if its run is no longer wanted")
