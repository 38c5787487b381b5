"""A sweep's runs in MLflow: its identity, its parent run, what is already done, and the job overrides.

A sweep is identified by an id (``<design>-<hash of the design and the command-line overrides>`` unless given), so
the same command run twice is the same sweep. Its runs are found again by (sweep id, deterministic run name):

- a run already FINISHED is skipped;
- a leftover that is not FINISHED (RUNNING after a kill, KILLED, FAILED) is run again; when its checkpoint
  directory holds a checkpoint *of that very run* and it did not diverge, it resumes (``resume=true``) into the
  same MLflow run from the checkpoint; otherwise it starts afresh, and a RUNNING leftover is marked KILLED first;
- but a RUNNING run that recorded a metric within the last ``stale_after_s`` seconds is left alone (reported
  ACTIVE): its job may still be training elsewhere (SLURM jobs and orphaned workers outlive a killed lab-sweep), and
  a second copy would write into the same run.

Every run is a child of an explicit parent run (tag ``sweep_parent=<id>``), which ends with the sweep's summary
as tags. The parent carries ``sweep_parent`` / ``sweep_design`` rather than ``sweep`` / ``design`` so that a loader
selecting a sweep's runs by ``sweep`` gets the training runs only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from sweeps.designs import RunSpec
from tracking.record import Checkpoint, FailureKind, Metric, Tag

# Task overrides that do not change what a run computes, left out of the sweep id.
NEUTRAL_KEYS = ("trainer.threads", "trainer.progress_bar", "tracking.uri", "checkpoint_dir", "data.cache_dir")
# Keys the sweep sets on every job; the command line must not set them too.
SWEEP_KEYS = ("tracking.run_name", "tracking.parent_run_id", "resume")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A sweep that cannot start; the message names the problem and the fix."""


def override_key(override: str) -> str:
    """The key of a Hydra override: ``++tracking.tags.x='1'`` -> ``tracking.tags.x``."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_after_requeue(overrides: Sequence[str], cfg: Any, restart_count: int) -> list[str]:
    """The overrides of a job that SLURM requeued by itself (a node failure, `scontrol requeue`; restart_count =
    SLURM_RESTART_COUNT): resume=true when its run (``cfg``: the job's composed config) left a checkpoint, so the
    run continues instead of starting afresh beside it; the overrides unchanged otherwise. lab.run checks that
    the checkpointed run was started with the same settings."""
    overrides = list(overrides)
    if restart_count < 1 or "resume=true" in overrides or not cfg.tracking.run_name:
        return overrides
    ckpt_dir = Checkpoint.run_dir(cfg.checkpoint_dir, cfg.tracking.experiment, cfg.tracking.run_name)
    if not ((ckpt_dir / Checkpoint.RUN_RECORD).exists() and (ckpt_dir / Checkpoint.LAST).exists()):
        return overrides  # killed before its first checkpoint: nothing to continue
    return [*(o for o in overrides if override_key(o) != "resume"), "resume=true"]


def sweep_id(design: Mapping[str, Any], task_overrides: Sequence[str], given: Optional[str] = None) -> str:
    """``given`` if set, else ``<design name>-<8 hex>`` from the design and the command-line overrides (without the
    ones that do not change results, NEUTRAL_KEYS): the same command is the same sweep, so it can be resumed."""
    if given is not None:
        if not ID_PATTERN.match(given):
            raise SweepError(f"sweep id {given!r}: use letters, digits, '.', '_' and '-' only")
        return given
    relevant = sorted(o for o in task_overrides if override_key(o) not in NEUTRAL_KEYS)
    digest = hashlib.sha1(json.dumps([dict(design), relevant], sort_keys=True, default=str).encode()).hexdigest()
    return f"{design.get('name', 'sweep')}-{digest[:8]}"


def check_overrides(task_overrides: Sequence[str], specs: Sequence[RunSpec]) -> None:
    """Refuse command-line overrides of keys that the design or the sweep sets on each run (they would silently
    lose to one or the other)."""
    owned = {override_key(o): f"the design (run {spec.name})" for spec in specs for o in spec.overrides}
    owned |= {f"tracking.tags.{k}": "the design's tags" for spec in specs for k in spec.tags}
    owned |= {key: "the sweep" for key in (*SWEEP_KEYS, f"tracking.tags.{Tag.SWEEP}", f"tracking.tags.{Tag.DESIGN}")}
    for o in task_overrides:
        key = override_key(o)
        if key in owned:
            raise SweepError(f"override {o!r}: {key} is set per run by {owned[key]}; drop it from the command line "
                             "(change the design's parameters instead)")


def job_overrides(spec: RunSpec, sweep: str, design: str, parent_run_id: str, task_overrides: Sequence[str],
                  resume: bool = False, threads: Optional[int] = None) -> list[str]:
    """The full Hydra override list of one job: command line, the spec, then tracking under the sweep's parent."""
    tags = {**spec.tags, Tag.SWEEP: sweep, Tag.DESIGN: design}
    out = [*task_overrides, *spec.overrides,
           f"tracking.run_name='{spec.name}'", f"tracking.parent_run_id={parent_run_id}",
           *(f"++tracking.tags.{k}='{v}'" for k, v in tags.items())]
    if resume:
        out.append("resume=true")
    if threads is not None and not any(override_key(o) == "trainer.threads" for o in task_overrides):
        out.append(f"trainer.threads={threads}")
    return out


# -------------------------------------------------------------------------------------------- what is done


@dataclass(frozen=True)
class Previous:
    """The run of this name recorded by an earlier launch of the sweep."""

    run_id: str
    status: str
    reason: Optional[str]
    kind: Optional[str]
    """Its status_kind tag (a FailureKind), None when it has none."""
    N: Optional[float]
    D: Optional[float]
    C: Optional[float]
    final_val_loss: Optional[float]
    last_active_s: Optional[float] = None
    """Wall time (epoch seconds) of its latest train/loss, or its start if none; read for RUNNING runs only."""


@dataclass(frozen=True)
class Job:
    """One run to launch: fresh, or resumed from a checkpoint of the leftover ``previous``."""

    spec: RunSpec
    resume: bool = False
    previous: Optional[Previous] = None


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    skipped: tuple[tuple[RunSpec, Previous], ...]
    """Finished by an earlier launch."""
    active: tuple[tuple[RunSpec, Previous], ...] = ()
    """RUNNING and recently active: possibly still training elsewhere, not launched again."""


def checkpoint_of(ckpt_dir: Path, run_id: str) -> bool:
    """Whether ``ckpt_dir`` (lab.run.checkpoint_dir) holds a checkpoint of MLflow run ``run_id`` to resume."""
    meta = ckpt_dir / Checkpoint.RUN_RECORD
    if not (meta.exists() and (ckpt_dir / Checkpoint.LAST).exists()):
        return False
    return json.loads(meta.read_text()).get("run_id") == run_id


def plan_jobs(specs: Sequence[RunSpec], previous: Mapping[str, Previous], checkpoint_root: Path,
              resume: bool = True, now_s: float = 0.0, stale_after_s: float = 300.0) -> Plan:
    """Skip finished runs, leave recently active ones alone, resume interrupted ones that have a checkpoint, run the
    rest (module docstring).

    checkpoint_root: ``<checkpoint_dir>/<tracking.experiment>``, where lab-train keeps ``<run name>/last.ckpt``.
    now_s: the current wall time (epoch seconds); stale_after_s: how long a RUNNING run must have been silent to
    count as interrupted (0: always).
    """
    jobs, skipped, active = [], [], []
    for spec in specs:
        prev = previous.get(spec.name)
        if prev is not None and prev.status == "FINISHED":
            skipped.append((spec, prev))
            continue
        if (prev is not None and prev.status == "RUNNING" and prev.last_active_s is not None
                and now_s - prev.last_active_s < stale_after_s):
            active.append((spec, prev))
            continue
        resumable = (resume and prev is not None and prev.kind != FailureKind.DIVERGED
                     and checkpoint_of(checkpoint_root / spec.name, prev.run_id))
        jobs.append(Job(spec, resume=resumable, previous=prev))
    return Plan(tuple(jobs), tuple(skipped), tuple(active))


def _number(value: Any) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# -------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run of the sweep in this launch.

    status: FINISHED (trained now), SKIPPED (finished by an earlier launch), FAILED (the run diverged: MLflow run
    FAILED with its status_reason), ERROR (the job raised; reason says what), ACTIVE (a RUNNING run that recorded
    a metric recently: left alone), NOT_RUN (the sweep was interrupted).
    """

    name: str
    status: str
    run_id: Optional[str] = None
    reason: Optional[str] = None
    N: Optional[float] = None
    D: Optional[float] = None
    C: Optional[float] = None
    final_val_loss: Optional[float] = None
    resumed: bool = False
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_previous(cls, spec: RunSpec, prev: Previous, status: str, resumed: bool = False) -> RunOutcome:
        return cls(spec.name, status, prev.run_id, prev.reason, prev.N, prev.D, prev.C, prev.final_val_loss,
                   resumed, dict(spec.tags))

    @classmethod
    def from_result(cls, spec: RunSpec, result: Mapping[str, Any], resumed: bool) -> RunOutcome:
        """From the task's return value (lab.run.RunResult as a dict)."""
        return cls(spec.name, str(result["status"]), result["run_id"], result.get("reason"),
                   _number(result.get("N")), _number(result.get("D")), _number(result.get("C")),
                   _number(result.get("final_val_loss")), resumed, dict(spec.tags))


def outcome_after_crash(job: Job, after: Mapping[str, Previous], err: BaseException) -> RunOutcome:
    """A job whose launcher raised (a worker died): what the store recorded for it in this launch, else ERROR."""
    prev = after.get(job.spec.name)
    recorded_now = prev is not None and (job.resume or job.previous is None or prev.run_id != job.previous.run_id)
    if recorded_now and prev.status in ("FINISHED", "FAILED"):
        return RunOutcome.from_previous(job.spec, prev, prev.status, job.resume)
    return RunOutcome(job.spec.name, "ERROR", run_id=prev.run_id if recorded_now else None,
                      reason=f"launcher: {type(err).__name__}: {err}", resumed=job.resume, tags=dict(job.spec.tags))


STATUSES = ("FINISHED", "SKIPPED", "FAILED", "ERROR", "ACTIVE", "NOT_RUN")


def waiting_on(stage: int, specs: Sequence[RunSpec], outcomes: Mapping[str, RunOutcome]) -> list[str]:
    """Runs of stages before ``stage`` without a FINISHED MLflow run: what a run of ``stage`` would wait for."""
    done = ("FINISHED", "SKIPPED")
    return [s.name for s in specs if s.stage < stage and getattr(outcomes.get(s.name), "status", None) not in done]


@dataclass(frozen=True)
class SweepSummary:
    sweep_id: str
    design: str
    parent_run_id: str
    outcomes: tuple[RunOutcome, ...]

    def counts(self) -> dict[str, int]:
        """Runs per outcome: finished, skipped, failed, error, active, not_run."""
        return {s.lower(): sum(o.status == s for o in self.outcomes) for s in STATUSES}

    @property
    def complete(self) -> bool:
        """Every run of the design has a FINISHED MLflow run (now or before)."""
        return all(o.status in ("FINISHED", "SKIPPED") for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "design": self.design, "parent_run_id": self.parent_run_id,
                "counts": self.counts(), "runs": [asdict(o) for o in self.outcomes]}

    def table(self) -> str:
        """A plain-text table of the runs, then the counts."""
        def num(x: Optional[float], fmt: str) -> str:
            return f"{'-':>8}" if x is None else format(x, fmt)

        width = max([len("run")] + [len(o.name) for o in self.outcomes])
        lines = [f"{'run':<{width}}  {'status':<8}  {'N':>8}  {'D':>8}  {Metric.VAL_LOSS:>8}  note",
                 "-" * (width + 50)]
        for o in self.outcomes:
            note = "resumed" if o.resumed else ""
            if o.status in ("FAILED", "ERROR", "NOT_RUN") and o.reason:
                note = (o.reason.splitlines() or [""])[0][:100]
            lines.append(f"{o.name:<{width}}  {o.status:<8}  {num(o.N, '8.3g')}  {num(o.D, '8.3g')}  "
                         f"{num(o.final_val_loss, '8.4f')}  {note}".rstrip())
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items() if v)
        lines.append(f"sweep {self.sweep_id} (parent run {self.parent_run_id}): {counts}")
        return "\n".join(lines)
