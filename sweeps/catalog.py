"""The designs a sweep can run, by name, and their expansion from config (``hydra.sweeper.design``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from lab.config import BatchConfig, ModelConfig
from sweeps import branches, schedule_study, warmup_check
from sweeps.designs import Base, DesignError, RunSpec, isoflop, lr_batch, size_tokens_grid
from tracking.record import Design

DESIGNS: Mapping[str, Callable[..., list[RunSpec]]] = MappingProxyType({
    Design.GRID: size_tokens_grid,
    Design.ISOFLOP: isoflop,
    Design.LR_BATCH: lr_batch,
    Design.CBS: branches.cbs,
    Design.WARMUP_CHECK: warmup_check.warmup_check,
    Design.SCHEDULES: schedule_study.schedules,
})


def expand(design: Mapping[str, Any], model: ModelConfig, batch: BatchConfig) -> list[RunSpec]:
    """The runs of a design given as config: ``{name: isoflop, sizes: [...], <the generator's parameters>}``."""
    params = dict(design)
    name = params.pop("name", None)
    if name not in DESIGNS:
        raise DesignError(f"unknown design {name!r}: choose one of {', '.join(DESIGNS)} (e.g. sweep=isoflop)")
    generator = DESIGNS[name]
    accepted = [p for p in inspect.signature(generator).parameters if p != "base"]
    unknown = sorted(set(params) - set(accepted) - {"sizes"})
    if unknown:
        raise DesignError(f"design {name}: unknown parameter(s) {unknown}; it takes sizes, {', '.join(accepted)}")
    base = Base.from_config(model, batch, params.pop("sizes", ()))
    try:
        inspect.signature(generator).bind(base, **params)
    except TypeError as err:
        raise DesignError(f"design {name}: {err}; it takes sizes, {', '.join(accepted)}") from None
    return generator(base, **params)
