"""Search spaces of Optuna studies: which config keys a trial samples, and in which ranges (conf/study/*.yaml).

A space file has three keys::

    params:     {config key: {low, high, log, int, grid} | {choices}}   # ranges (log-uniform with log) or categorical
    overrides:  [lab-train overrides fixed for every trial]
    pruning:    {every_tokens, startup_trials, warmup_tokens}

A space is validated before its study starts: every corner (each param at its bounds, each choice) is composed
with Hydra's compose API and checked as lab.run.prepare checks a run, so no trial fails on a bad config.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml

from lab import flops
from lab.config import TrainConfig
from lab.run import budget_tokens, model_config, step_plan
from lab.train import CONF_MODULE, compose_config


class StudyError(ValueError):
    """A study that cannot start: the message names the file / field / value and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched config key: a float/int range (``log`` for log-uniform) or categorical ``choices``."""

    name: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] = ()
    """Values the grid sampler visits (ranges only; categorical params visit their choices)."""

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def edges(self) -> tuple[Any, ...]:
        """The values that bound what a trial can run with: checked before the study starts."""
        return self.choices or (self.low, self.high)


@dataclass(frozen=True)
class PruningSettings:
    every_tokens: Optional[float] = None
    """Token checkpoint interval for val/loss reports; None: a tenth of the base budget D."""
    startup_trials: int = 4
    """median: completed trials before any pruning."""
    warmup_tokens: float = 0.0
    """median: no trial is pruned before this many tokens."""


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: tuple[Param, ...]
    overrides: tuple[str, ...] = ()
    """Fixed lab-train overrides of every trial (model.size, budget, ...)."""
    pruning: PruningSettings = field(default_factory=PruningSettings)

    def grid(self) -> dict[str, list[Any]]:
        missing = [p.name for p in self.params if not (p.choices or p.grid)]
        if missing:
            raise StudyError(f"search space {self.name}: the grid sampler needs values for {', '.join(missing)}; "
                             "add `grid: [v1, v2, ...]` to each range in the space file")
        return {p.name: list(p.choices or p.grid) for p in self.params}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=list)


def _space_error(source: str, what: str, fix: str) -> StudyError:
    return StudyError(f"search space {source}: {what}; {fix}")


def _param(source: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise _space_error(source, f"params.{name} is {spec!r}", "give a mapping {low, high, log} or {choices}")
    unknown = set(spec) - {"low", "high", "log", "int", "choices", "grid"}
    if unknown:
        raise _space_error(source, f"params.{name} has unknown keys {sorted(unknown)}",
                           "use low, high, log, int, grid or choices")
    if "choices" in spec:
        choices = tuple(spec["choices"] or ())
        if not choices or set(spec) - {"choices"}:
            raise _space_error(source, f"params.{name}", "a categorical param has a non-empty `choices` list only")
        return Param(name=name, choices=choices)
    try:
        low, high = float(spec["low"]), float(spec["high"])
        grid = tuple(float(v) for v in spec.get("grid") or ())
    except (KeyError, TypeError, ValueError):
        raise _space_error(source, f"params.{name}={spec}", "a range needs numeric low and high") from None
    log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
    if not low < high or (log and low <= 0):
        raise _space_error(source, f"params.{name} range [{low}, {high}]",
                           "use low < high, and low > 0 for a log-uniform range")
    if any(not low <= v <= high for v in grid):
        raise _space_error(source, f"params.{name}.grid={list(grid)}", f"keep grid values within [{low}, {high}]")
    if integer:
        low, high, grid = int(low), int(high), tuple(int(v) for v in grid)
    return Param(name=name, low=low, high=high, log=log, integer=integer, grid=grid)


def load_space(name_or_path: str) -> SearchSpace:
    """A search space from ``conf/study/<name>.yaml`` or a YAML file path (keys: params, overrides, pruning)."""
    path = Path(name_or_path)
    # The packaged spaces are read through importlib.resources: they ship inside the installed `conf` package.
    packaged = resources.files(CONF_MODULE) / "study"
    if path.suffix not in (".yaml", ".yml"):
        path, source = packaged / f"{name_or_path}.yaml", f"conf/study/{name_or_path}.yaml"
    else:
        source = str(path)
    if not path.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in packaged.iterdir() if p.name.endswith(".yaml"))
        raise StudyError(f"search space {name_or_path!r} not found ({source}); use one of {known} or a .yaml path")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"params", "overrides", "pruning"}
    if unknown or not raw.get("params"):
        raise _space_error(source, f"top-level keys {sorted(raw)}", "give `params` (required), `overrides`, `pruning`")
    params = tuple(_param(source, str(k), v) for k, v in raw["params"].items())
    overrides = tuple(str(o) for o in raw.get("overrides") or ())
    try:
        pruning = PruningSettings(**(raw.get("pruning") or {}))
    except TypeError as err:
        raise _space_error(source, f"pruning: {err}", "use every_tokens, startup_trials, warmup_tokens") from None
    return SearchSpace(name=path.name.rsplit(".", 1)[0], params=params, overrides=overrides, pruning=pruning)


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override value (repr keeps every digit of a float)."""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else repr(value)


def base_overrides(space: SearchSpace, threads: int, overrides: Sequence[str]) -> list[str]:
    """Space overrides, then the worker defaults (one torch thread, no progress bar), then the caller's."""
    return [*space.overrides, f"trainer.threads={threads}", "trainer.progress_bar=false", *overrides]


def check_runnable(cfg: TrainConfig) -> int:
    """Sizes, budget and schedules of a config, as lab.run.prepare checks them (no data, no run); returns D."""
    N = flops.non_embedding_params(model_config(cfg))
    plan = step_plan(cfg, budget_tokens(cfg, N))
    return plan[-1].tokens_before + plan[-1].sequences * cfg.model.seq_len


def validate_space(space: SearchSpace, overrides: Sequence[str]) -> tuple[TrainConfig, int]:
    """Compose and check every corner of the space (each param at its bounds / choices) before any trial runs.

    Returns the config at the first corner and its budget D in tokens (the base of pruning checkpoints).
    """
    first: Optional[tuple[TrainConfig, int]] = None
    for corner in itertools.product(*(p.edges() for p in space.params)):
        values = [f"{p.name}={format_value(v)}" for p, v in zip(space.params, corner)]
        try:
            cfg = compose_config([*overrides, *values])
            D = check_runnable(cfg)
        except Exception as err:  # Hydra's override errors and lab's ConfigError alike: re-raised with the corner
            raise StudyError(f"search space {space.name}: the trial with {', '.join(values)} cannot run: {err}") \
                from err
        first = first or (cfg, D)
    assert first is not None
    return first
