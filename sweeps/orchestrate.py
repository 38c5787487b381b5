"""Running a design of runs: validate, open the parent run, skip / resume / launch, record outcomes, summarise.

A plain function over two callables, so any driver can run a sweep: the Hydra ``DesignSweeper`` passes its config
loader (``validate``) and its launcher (``launch``); tests and notebooks can pass their own. What a job returns is
``lab.run.RunResult`` as a dict, or the exception it raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from sweeps.designs import RunSpec
from sweeps.runs import (Job, RunOutcome, SweepSummary, check_overrides, job_overrides, outcome_after_crash,
                         plan_jobs, sweep_id, waiting_on)
from sweeps.tracker import SweepTracker

log = logging.getLogger(__name__)

JobResult = Union[Mapping[str, Any], BaseException]
"""What one launched job became: the run's result as a dict, or the exception the job raised."""
Launch = Callable[[list[list[str]], int], Sequence[JobResult]]
"""Launch these jobs' override lists (first job index given) and return what each became, in order."""


@dataclass(frozen=True)
class SweepSettings:
    """Where a sweep records and how it treats leftovers (hydra.sweeper.* and the composed config)."""

    tracking_uri: str
    experiment: str
    checkpoint_dir: str
    sweep_id: Optional[str] = None
    resume: bool = True
    stale_after_s: float = 300.0
    max_batch_size: Optional[int] = None


def outcome(job: Job, result: JobResult) -> RunOutcome:
    if isinstance(result, BaseException):
        return RunOutcome(job.spec.name, "ERROR", reason=f"{type(result).__name__}: {result}", resumed=job.resume,
                          tags=dict(job.spec.tags))
    return RunOutcome.from_result(job.spec, result, job.resume)


def batches(jobs: Sequence[Job], specs: Sequence[RunSpec], outcomes: dict[str, RunOutcome],
            max_batch_size: Optional[int]) -> Iterator[tuple[int, Sequence[Job]]]:
    """(first job index, jobs) to launch together: stage by stage (RunSpec.stage), at most max_batch_size at once.
    A stage starts only once every run of the earlier stages finished (CBS branches need their reference's
    checkpoints); otherwise its jobs end NOT_RUN with the runs they wait for as the reason."""
    start = 0
    for stage in sorted({j.spec.stage for j in jobs}):
        staged = [j for j in jobs if j.spec.stage == stage]
        waiting = waiting_on(stage, specs, outcomes)
        if waiting:
            log.warning("stage %d (%d runs) not launched: earlier runs did not finish: %s", stage, len(staged),
                        ", ".join(waiting[:5]))
            outcomes.update({j.spec.name: RunOutcome(
                j.spec.name, "NOT_RUN", reason=f"waits for unfinished run(s) {', '.join(waiting[:3])}",
                tags=dict(j.spec.tags)) for j in staged})
            continue
        size = max_batch_size or max(len(staged), 1)
        for i in range(0, len(staged), size):
            yield start, staged[i:i + size]
            start += len(staged[i:i + size])


def run_design(design: Mapping[str, Any], specs: Sequence[RunSpec], task_overrides: Sequence[str],
               settings: SweepSettings, validate: Callable[[list[str]], Any], launch: Launch,
               threads: Callable[[int], Optional[int]] = lambda n_jobs: None) -> SweepSummary:
    """Run ``specs`` (the expanded ``design``) with ``task_overrides`` on every run; returns the sweep's summary.

    1. every run's overrides are validated (``validate``) before anything is recorded;
    2. the parent run is opened (found again by sweep id), finished runs are skipped, interrupted ones resumed;
    3. jobs go to ``launch`` stage by stage; a raising job or a crashed launch does not stop the sweep;
    4. the parent ends with the counts as tags, and a table is printed.
    ``threads(n_jobs)`` gives each job's torch threads (None: the job's own setting).
    """
    design_name = str(design.get("name"))
    check_overrides(task_overrides, specs)
    sid = sweep_id(design, task_overrides, settings.sweep_id)
    for spec in specs:
        validate([*task_overrides, *spec.overrides])

    tracker = SweepTracker(settings.tracking_uri, settings.experiment)
    parent = tracker.open_parent(sid, design, specs, task_overrides)
    plan = plan_jobs(specs, tracker.previous_runs(sid), Path(settings.checkpoint_dir) / settings.experiment,
                     settings.resume, now_s=time.time(), stale_after_s=settings.stale_after_s)
    outcomes = {spec.name: RunOutcome.from_previous(spec, prev, "SKIPPED") for spec, prev in plan.skipped}
    for spec, prev in plan.active:
        log.warning("run %s (%s) is RUNNING and recorded a metric in the last %.0f s: left alone; re-run the sweep "
                    "once it ended, or with hydra.sweeper.stale_after_s=0 if it is dead", spec.name, prev.run_id,
                    settings.stale_after_s)
        outcomes[spec.name] = RunOutcome.from_previous(spec, prev, "ACTIVE")
    n_threads = threads(len(plan.jobs))
    log.info("sweep %s (%s): %d runs, %d finished before, %d to launch (%d resumed); parent run %s", sid,
             design_name, len(specs), len(plan.skipped), len(plan.jobs), sum(j.resume for j in plan.jobs), parent)

    def summary() -> SweepSummary:
        return SweepSummary(sid, design_name, parent, tuple(
            outcomes.get(s.name, RunOutcome(s.name, "NOT_RUN", tags=dict(s.tags))) for s in specs))

    try:
        for start, batch in batches(plan.jobs, specs, outcomes, settings.max_batch_size):
            for job in batch:
                tracker.prepare(job, sid)
            overrides = [job_overrides(j.spec, sid, design_name, parent, task_overrides, j.resume, n_threads)
                         for j in batch]
            try:
                results = launch(overrides, start)
            except Exception as err:  # noqa: BLE001 - a crashed worker: what the store says is what happened
                log.exception("launcher failed on jobs %d-%d; reading their outcome from MLflow",
                              start, start + len(batch) - 1)
                after = tracker.previous_runs(sid)
                outcomes.update({j.spec.name: outcome_after_crash(j, after, err) for j in batch})
                continue
            for job, result in zip(batch, results):
                outcomes[job.spec.name] = outcome(job, result)
    except BaseException:  # Ctrl-C, SystemExit: end the parent as KILLED with what is known, then stop
        result = summary()
        tracker.close_parent(parent, result, interrupted=True)
        print(result.table(), flush=True)
        raise
    result = summary()
    tracker.close_parent(parent, result)
    print(result.table(), flush=True)
    return result
