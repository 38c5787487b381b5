"""`lab-train`: the Hydra entry point. Compose conf/, validate into typed objects, train one run.

    lab-train experiment=smoke
    lab-train model.size=4 budget.tokens=2e7 optim.lr=2e-3
    lab-train tracking.run_name=my-run resume=true
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lab.config import ConfigError, TrainConfig, register

register()
# The configs are the package `conf` (Hydra's packaged configs), found wherever it is installed, not beside the source.
CONF_MODULE = "conf"
CONF_PATH = f"pkg://{CONF_MODULE}"


def to_config(cfg: DictConfig) -> TrainConfig:
    """The composed config as typed objects; every cross-field rule runs here, before anything is recorded."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainConfig)
    return obj


def compose_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The config lab-train would run with these overrides, for in-process callers (sweeps, tests, notebooks)."""
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return to_config(compose(config_name="train", overrides=list(overrides)))


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        typed = to_config(cfg)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    from lab.run import execute, prepare, quiet_lightning  # torch and Lightning load once the config is valid

    quiet_lightning()
    try:
        prepared = prepare(typed)
    except ValueError as err:  # every check that needs the model, the plan or the data: nothing recorded yet
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from lab.store import StoreUnavailable

    try:
        result = execute(prepared)
    except StoreUnavailable as err:  # the message names the store and the fix; a traceback would bury it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{result.status}: run {result.run_name} ({result.run_id}) N={result.N:,} D={result.D:,} "
          f"C={result.C:.3g} val/loss={result.final_val_loss:.4f}")
    if result.status != "FINISHED":
        print(f"reason: {result.reason}", file=sys.stderr)
        if HydraConfig.get().mode.name == "RUN":
            sys.exit(1)
    return result.final_val_loss


if __name__ == "__main__":
    main()
