"""What `lab-demo` shows on the terminal while a study runs: one progress bar per study, nothing else.

Everything the sweep machinery and its workers write (Hydra's job lines and override dumps, per-run lines,
Lightning and library warnings, the sweep's run table) goes to the demo's log file instead: the process's file
descriptors 1 and 2 point there while a study runs, and worker processes started meanwhile inherit them. The bar
writes to a copy of the terminal taken before, and counts the study's runs in the MLflow store: runs done / total,
ETA, and the run that started last.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

from tqdm import tqdm

from tracking.record import Tag

TERMINAL = ("FINISHED", "FAILED", "KILLED")


class Console:
    """The terminal as it was when the demo started; ``quiet_into(log)`` sends everything else to the log."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        sys.stdout.flush()
        sys.stderr.flush()
        self.out: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
        self.err: IO[str] = os.fdopen(os.dup(2), "w", buffering=1)

    def print(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.out, flush=True)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Descriptors 1 and 2 (and so sys.stdout, sys.stderr, logging, workers) into the log file."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(self.log_path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class StudyBar:
    """A tqdm bar of one sweep's runs, updated from the MLflow store by a background thread every ``every_s``."""

    def __init__(self, console: Console, title: str, tracking_uri: str, experiment: str, sweep_id: str,
                 every_s: float = 2.0):
        self.sweep_id, self.every_s = sweep_id, every_s
        self.uri, self.experiment = tracking_uri, experiment
        self.started = time.time()
        self.tty = tty = console.err.isatty()
        self.out = console.err
        # a log or a pipe gets the bar once, when the study ends: tqdm draws into a scratch buffer meanwhile
        self.bar = tqdm(total=None, desc=title, unit="run", file=console.err if tty else io.StringIO(),
                        dynamic_ncols=tty, ncols=None if tty else 100,
                        bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar:20}| {elapsed}<{remaining} {postfix}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._client = None
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self.update()

    def update(self) -> None:
        """One look at the store. A store busy with the workers' writes just skips this look."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            self._client = self._client or MlflowClient(self.uri)
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                return
            runs = self._client.search_runs([exp.experiment_id], f"tags.{Tag.SWEEP} = '{self.sweep_id}'",
                                            max_results=5000)
            if self.bar.total is None:
                parents = self._client.search_runs([exp.experiment_id],
                                                   f"tags.{Tag.SWEEP_PARENT} = '{self.sweep_id}'", max_results=1)
                if parents and Tag.SWEEP_RUNS in parents[0].data.tags:
                    self.bar.total = int(parents[0].data.tags[Tag.SWEEP_RUNS])
        except MlflowException:  # e.g. "database is locked" while workers write: the next look will do
            return
        done = {r.info.run_name for r in runs if r.info.status == "FINISHED"
                or (r.info.status in TERMINAL and (r.info.end_time or 0) / 1000 >= self.started)}
        running = sorted((r for r in runs if r.info.status == "RUNNING" and r.info.run_name not in done),
                         key=lambda r: r.info.start_time or 0)
        self.bar.n = len(done)
        if running:
            self.bar.set_postfix_str(running[-1].info.run_name[:40], refresh=False)
        self.bar.refresh()

    def close(self, ok: Optional[bool] = None, done: Optional[int] = None, total: Optional[int] = None) -> None:
        """Stop polling; the final counts come from the sweep's summary when given, else from one last look."""
        self._stop.set()
        self._thread.join()
        if done is None or total is None:
            self.update()
        else:
            self.bar.total, self.bar.n = total, done
        self.bar.set_postfix_str("done" if ok else "some runs did not finish (see the log)", refresh=False)
        self.bar.refresh()
        if not self.tty:
            print(str(self.bar), file=self.out, flush=True)
        self.bar.close()
