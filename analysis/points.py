"""The one points stage: which recorded runs are points of which law (issue 13, item 5).

`lab-fit`, the dashboard (app/data.py) and the notebooks all select their points here, so the same store and
sweep give the same points, hence the same numbers, wherever a law is fitted.

- **Loss, IsoFLOP and hyperparameter laws** take runs that are (1) training runs, not a sweep's parent run;
  (2) FINISHED with a finite final validation loss; (3) trained *from scratch*: a critical-batch-size branch
  (tag ``branch_of``) continues another run's checkpoint for a short window, so its final loss belongs to the
  reference's trajectory and is no (N, D) point; (4) of a *design* (tag ``design``, sweeps.designs) made for the
  law: a size x tokens grid or IsoFLOP profiles for the loss laws, an lr x B landscape for the hyperparameters
  (runs without a design tag, trained by hand, are kept: nothing says they are wrong); (5) for the
  hyperparameters, in an (N, D) cell with at least ``MIN_CONFIGS_PER_CELL`` distinct (lr, B) configurations: a
  cell of one configuration has that configuration as its "optimum", whatever its loss.
- **The critical-batch-size law** takes the branches: FINISHED runs tagged ``branch_of``, with the tokens of the
  checkpoint they start from (tag ``checkpoint_tokens``), B and the final loss.

C is the compute of the laws, C = 6·N·D (`tracking.record.compute`), set here on every frame of points, so no
point is drawn or fitted at another C. Each selection says what it left out and why (``Points.notes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from tracking.record import Design, Param, Role, Tag, compute

LAW_DESIGNS: dict[str, tuple[str, ...]] = {
    "loss": (Design.GRID, Design.ISOFLOP),
    "isoflop": (Design.ISOFLOP, Design.GRID),
    "hparams": (Design.LR_BATCH,),
    "cbs": (Design.CBS,),
    "schedule": (Design.SCHEDULES,),
}
"""The sweep designs whose runs are points of each law (tag ``design``); the first is the one made for it."""
LAWS = tuple(LAW_DESIGNS)
DEFAULT_GRANULARITY = 8
"""Batch granularity (sequences) where no run records batch.micro_batch: lab's default micro_batch."""
MIN_CONFIGS_PER_CELL = 2
"""Fewest distinct (lr, B) configurations of an (N, D) cell for the hyperparameter laws."""

DESIGN = Tag.DESIGN
"""Column of the runs frame (analysis.load) holding the design tag (a bare column, like ``sweep``)."""
SWEEP = Tag.SWEEP
SWEEP_PARENT = f"tag.{Tag.SWEEP_PARENT}"
BRANCH_OF = f"tag.{Tag.BRANCH_OF}"
"""Column of the runs frame naming the reference run a branch continues."""
CHECKPOINT_TOKENS = f"tag.{Tag.CHECKPOINT_TOKENS}"
REFERENCE_B = f"param.{Param.BRANCH_B_REF}"
"""Column of the runs frame holding the reference run's batch (tokens), a param of every branch."""
BUDGET = f"tag.{Tag.BUDGET}"
POINT_COLUMNS = ("run_id", "run_name", SWEEP, "N", "D", "C", "B", "lr", "loss")
"""Columns of a frame of (N, D) points (design §4), plus the run and sweep each comes from."""
NEEDED = {"loss": ("N", "D", "loss"), "isoflop": ("N", "D", "loss"), "hparams": ("N", "D", "lr", "B", "loss")}
SCHEDULE_COLUMNS = ("run_id", "run_name", SWEEP, "N", "D", "B", "lr", Tag.SCHEDULE_NAME, "role", "loss")
"""Columns of a schedule study's runs (schedule_points)."""
BRANCH_COLUMNS = ("run_id", "run_name", SWEEP, "checkpoint_tokens", "B", "loss", "B_ref", "reference", "seq_len",
                  "micro_batch")


@dataclass(frozen=True)
class Points:
    """The points of one law: `frame` (POINT_COLUMNS, or BRANCH_COLUMNS for cbs), the full `runs` rows they come
    from (for learning-curve points), and `notes`: what was left out and what looks wrong, in words."""

    law: str
    frame: pl.DataFrame
    runs: pl.DataFrame
    notes: tuple[str, ...] = field(default=())
    mixed: tuple[str, ...] = field(default=())
    """Warnings that the points mix what should not be mixed (designs, sweeps): shown next to the fit."""

    @property
    def run_ids(self) -> list[str]:
        return self.frame["run_id"].to_list() if "run_id" in self.frame.columns else []

    @property
    def sweeps(self) -> list[str]:
        if SWEEP not in self.frame.columns:
            return []
        return sorted(s for s in self.frame[SWEEP].unique().to_list() if s is not None)


def training_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """Every run but the sweeps' parent runs (tag ``sweep_parent``) and recorded forecasts (tag ``forecast_law``,
    lab-fit forecast), which train nothing."""
    for column in (SWEEP_PARENT, f"tag.{Tag.FORECAST}"):
        if column in runs.columns:
            runs = runs.filter(pl.col(column).is_null())
    return runs


def finished(runs: pl.DataFrame) -> pl.DataFrame:
    """FINISHED runs whose final validation loss is not NaN or infinite (a missing one is named by law_points)."""
    return runs.filter((pl.col("status") == "FINISHED") & (pl.col("loss").is_null() | pl.col("loss").is_finite()))


def from_scratch(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs trained from initialisation: every run but the CBS branches."""
    return runs.filter(pl.col(BRANCH_OF).is_null()) if BRANCH_OF in runs.columns else runs


def branch_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """The CBS branches: runs tagged ``branch_of``."""
    return runs.filter(pl.col(BRANCH_OF).is_not_null()) if BRANCH_OF in runs.columns else runs.clear()


def recorded_reference_B(values: pl.Series) -> float | None:
    """The reference run's batch (tokens) as the branches record it, when they agree on one; None otherwise."""
    found = values.cast(pl.Float64, strict=False).drop_nulls().unique().to_list()
    return found[0] if len(found) == 1 else None


def with_C(frame: pl.DataFrame) -> pl.DataFrame:
    """C = 6·N·D (tracking.record.compute) on every row: the one C of the laws."""
    return frame.with_columns(C=compute(pl.col("N"), pl.col("D")))


def sweeps_for(runs: pl.DataFrame, law: str) -> list[str]:
    """Sweeps holding runs of a design made for `law`, most recent first (by their latest start time)."""
    _check_law(law)
    runs = training_runs(runs)
    if SWEEP not in runs.columns or DESIGN not in runs.columns:
        return []
    fit = runs.filter(pl.col(DESIGN).is_in(LAW_DESIGNS[law]) & pl.col(SWEEP).is_not_null())
    if law == "cbs":
        fit = branch_runs(fit)
    else:
        fit = from_scratch(fit)
    order = fit.group_by(SWEEP).agg(pl.col("start_time").max()).sort("start_time", descending=True, nulls_last=True)
    return order[SWEEP].to_list()


def default_sweep(runs: pl.DataFrame, law: str) -> str | None:
    """The most recent sweep whose design fits `law` (None when no run carries such a design tag)."""
    found = sweeps_for(runs, law)
    return found[0] if found else None


def law_points(runs: pl.DataFrame, law: str, needed: tuple[str, ...] | None = None) -> Points:
    """The points of `law` ("loss", "isoflop", "hparams", "cbs") among `runs` (the frame of analysis.load.load_runs,
    already narrowed to the experiment and sweep wanted). `needed`: columns a point must have (default: NEEDED)."""
    _check_law(law)
    if law == "cbs":
        return _branch_points(runs)
    if law == "schedule":
        return schedule_points(runs)
    notes: list[str] = []
    runs = finished(training_runs(runs))
    scratch = from_scratch(runs)
    if scratch.height < runs.height:
        notes.append(f"leaving out {runs.height - scratch.height} critical-batch-size branch runs (tag {Tag.BRANCH_OF}:"
                     " they continue another run's checkpoint, so they are no (N, D) points; the CBS law reads them)")
    runs = scratch
    if DESIGN in runs.columns:
        wrong = runs.filter(pl.col(DESIGN).is_not_null() & ~pl.col(DESIGN).is_in(LAW_DESIGNS[law]))
        if wrong.height:
            kinds = sorted(set(wrong[DESIGN].to_list()))
            notes.append(f"left out {wrong.height} runs of design {kinds}: the {law} law takes runs of design "
                         f"{list(LAW_DESIGNS[law])} (tag {Tag.DESIGN}) or untagged runs")
            runs = runs.join(wrong.select("run_id"), on="run_id", how="anti")
    needed = tuple(needed or NEEDED[law])
    complete = runs.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in needed))
    if complete.height < runs.height:
        names = runs.join(complete, on="run_id", how="anti")["run_name"].to_list()
        notes.append(f"skipping {len(names)} finished runs lacking one of {list(needed)}: {names[:5]}")
    runs = complete
    if law == "hparams":
        runs, note = _enough_configs(runs)
        notes += [note] if note else []
    frame = with_C(runs).select(*[pl.col(c) if c in runs.columns else pl.lit(None, pl.String).alias(c)
                                  for c in POINT_COLUMNS])
    if law == "isoflop" and BUDGET in runs.columns:  # IsoFLOP sweeps tag each run with its planned budget C
        frame = frame.with_columns(budget=runs[BUDGET].cast(pl.Float64, strict=False))
    return Points(law, frame, runs, tuple(notes), _mixed(runs, law))


def validation_points(runs: pl.DataFrame, curves: pl.DataFrame, mode: str, **kwargs: float) -> pl.DataFrame:
    """`analysis.laws.curve_points` on the runs of a law's Points (`Points.runs`), with C = 6·N·D at each point."""
    from analysis.laws.curve_points import curve_points  # lazily: analysis.laws imports scipy

    return with_C(curve_points(runs, curves, mode, **kwargs))


def _enough_configs(runs: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    configs = runs.group_by("N", "D").agg(pl.struct("lr", "B").n_unique().alias("configs"))
    thin = configs.filter(pl.col("configs") < MIN_CONFIGS_PER_CELL)
    if thin.height == 0:
        return runs, ""
    kept = runs.join(thin.select("N", "D"), on=["N", "D"], how="anti")
    return kept, (f"left out {runs.height - kept.height} runs in {thin.height} (N, D) cells of fewer than "
                  f"{MIN_CONFIGS_PER_CELL} (lr, B) configurations: such a cell's only configuration is no optimum")


def _mixed(runs: pl.DataFrame, law: str) -> tuple[str, ...]:
    found = []
    if DESIGN in runs.columns:
        designs = sorted(d for d in runs[DESIGN].unique().to_list() if d is not None)
        if len(designs) > 1:
            found.append(f"the points mix designs {designs}: select one sweep (filters) to fit one design")
        if designs and runs[DESIGN].null_count():
            found.append(f"{runs[DESIGN].null_count()} points carry no design tag beside runs of design {designs}")
    if SWEEP in runs.columns and runs[SWEEP].n_unique() > 1:
        sweeps = sorted(str(s) for s in runs[SWEEP].unique().to_list())
        found.append(f"the points come from {len(sweeps)} sweeps {sweeps[:5]}: check that they share one data set "
                     "and one training setup")
    return tuple(found)


def _branch_points(runs: pl.DataFrame) -> Points:
    branches = finished(training_runs(branch_runs(runs)))
    tokens = (pl.col(CHECKPOINT_TOKENS).cast(pl.Float64, strict=False) if CHECKPOINT_TOKENS in branches.columns
              else pl.lit(None, pl.Float64))
    ref_B = (pl.col(REFERENCE_B).cast(pl.Float64, strict=False) if REFERENCE_B in branches.columns
             else pl.lit(None, pl.Float64))
    micro = "param.batch.micro_batch"
    micro_batch = (pl.col(micro).cast(pl.Float64, strict=False) if micro in branches.columns
                   else pl.lit(None, pl.Float64))
    full = branches.with_columns(checkpoint_tokens=tokens, B_ref=ref_B, reference=pl.col(BRANCH_OF) if
                                 BRANCH_OF in branches.columns else pl.lit(None, pl.String), micro_batch=micro_batch)
    complete = full.drop_nulls(["checkpoint_tokens", "B", "loss"])
    notes = []
    if complete.height < full.height:
        notes.append(f"left out {full.height - complete.height} branch runs lacking checkpoint_tokens, B or loss")
    frame = complete.select(*[pl.col(c) if c in complete.columns else pl.lit(None).alias(c) for c in BRANCH_COLUMNS])
    mixed = ()
    refs = frame["reference"].unique().to_list()
    if len(refs) > 1:
        mixed = (f"branches of {len(refs)} reference runs: the local CBS compares each with its own reference only "
                 "when one reference is selected (filter one sweep or point)",)
    return Points("cbs", frame, complete, tuple(notes), mixed)


WARMUP_COLUMNS = ("run_id", "run_name", SWEEP, "point", "seed", "role", "steps", "D", "B", "lr", "loss")
"""Columns of a warmup check's frame (analysis.laws.warmup_check): one row per run, ``steps`` its optimizer steps."""


def warmup_check_points(runs: pl.DataFrame) -> Points:
    """The runs of a batch-warmup check (design ``warmup_check``, sweeps.warmup_check): FINISHED training runs with
    their role, point and seed tags, optimizer steps (param ``steps``, else the last train/loss step) and loss."""
    runs = training_runs(runs)
    if DESIGN in runs.columns:
        runs = runs.filter(pl.col(DESIGN) == Design.WARMUP_CHECK)
    else:
        runs = runs.clear()
    done = finished(runs)
    notes = []
    if done.height < runs.height:
        names = runs.join(done, on="run_id", how="anti")["run_name"].to_list()
        notes.append(f"left out {len(names)} runs that did not finish with a finite val/loss: {names[:5]}")
    param_steps = f"param.{Param.STEPS}"
    steps = pl.col(param_steps).cast(pl.Float64, strict=False) if param_steps in done.columns else pl.lit(None)
    tag = {c: f"tag.{t}" for c, t in (("point", Tag.POINT), ("seed", Tag.SEED), ("role", Tag.ROLE))}
    frame = done.with_columns(
        steps=pl.coalesce(steps, pl.col("steps").cast(pl.Float64)).cast(pl.Int64),
        **{c: pl.col(t) if t in done.columns else pl.lit(None, pl.String) for c, t in tag.items()})
    frame = frame.select(*[pl.col(c) if c in frame.columns else pl.lit(None).alias(c) for c in WARMUP_COLUMNS])
    return Points(Design.WARMUP_CHECK, frame, done, tuple(notes), _mixed(done, Design.WARMUP_CHECK))


def schedule_points(runs: pl.DataFrame) -> Points:
    """The runs of a schedule study (design ``schedule_study``, sweeps.schedule_study): FINISHED training runs with their
    schedule name (tag ``schedule_name``) and role (``fit``: the law is fitted on it; ``held_out``: predicted and
    checked). A schedule law reads their lr and loss curves (analysis.cli_schedule.store_curves)."""
    runs = training_runs(runs)
    runs = runs.filter(pl.col(DESIGN) == Design.SCHEDULES) if DESIGN in runs.columns else runs.clear()
    done = finished(runs)
    notes = []
    if done.height < runs.height:
        names = runs.join(done, on="run_id", how="anti")["run_name"].to_list()
        notes.append(f"left out {len(names)} schedule-study runs that did not finish: {names[:5]}")
    tag = {Tag.SCHEDULE_NAME: Tag.SCHEDULE_NAME, "role": Tag.ROLE}
    frame = done.with_columns(**{c: pl.col(f"tag.{t}") if f"tag.{t}" in done.columns else pl.lit(None, pl.String)
                                 for c, t in tag.items()})
    frame = frame.select(*[pl.col(c) if c in frame.columns else pl.lit(None).alias(c) for c in SCHEDULE_COLUMNS])
    return Points("schedule", frame, done, tuple(notes), _mixed(done, "schedule"))


SCHEDULE_NAME = f"tag.{Tag.SCHEDULE_NAME}"
"""Column of the runs frame naming a schedule study's LR schedule variant (cosine, constant, two_stage, wsd, ...)."""
OPTIM_SCHEDULE = "param.optim.schedule"
"""Column of the runs frame holding the LR schedule lab-train ran (its config's optim.schedule)."""
ROLE = f"tag.{Tag.ROLE}"
SCHEDULES_FITTED = 3
"""Runs a schedule law is fitted to when no study says which: one per schedule, as the papers fit three (cosine,
constant and a two-stage drop; Luo et al. 2025, Tissue et al. 2024)."""


@dataclass(frozen=True)
class ScheduleRuns:
    """The runs a schedule law is fitted to (`fit`) and those it predicts (`held_out`), all of one model size N and
    one batch size B; `sweep` is the schedule study they come from (None: a group found by N and B); `note` says
    how they were chosen."""

    fit: tuple[str, ...]
    held_out: tuple[str, ...]
    N: float
    B: float
    sweep: str | None
    note: str


def schedule_of(runs: pl.DataFrame) -> pl.Series:
    """Each run's LR schedule: a study's tag ``schedule_name``, else the optim.schedule lab-train ran; null where
    neither is recorded."""
    found = [pl.col(c).cast(pl.String) for c in (SCHEDULE_NAME, OPTIM_SCHEDULE) if c in runs.columns]
    if not found:
        return pl.Series("schedule", [None] * runs.height, dtype=pl.String)
    return runs.select(pl.coalesce(*found).alias("schedule"))["schedule"]


def schedule_runs(runs: pl.DataFrame) -> ScheduleRuns | None:
    """The runs the schedule law takes by default, as `lab-fit schedule` should be given them.

    1. The most recent sweep of design ``schedule_study`` (sweeps made for the law: one N, one B, several schedules)
       with a finished run of role ``fit``: its runs of role ``fit`` are fitted, those of role ``held_out``
       predicted.
    2. Else the finished runs of the largest (N, B) group holding at least two distinct LR schedules (the most
       recent such group on a tie): the first run of each schedule, `SCHEDULES_FITTED` at most, is fitted and the
       others predicted.
    3. Else None: no runs of one model and one batch under different schedules, so no selection is a fit of the
       law (a mix of sizes or batch sizes is not one).
    """
    study = schedule_points(runs).runs.sort("start_time", nulls_last=True)
    if ROLE in study.columns and SWEEP in study.columns:
        with_fit = study.filter((pl.col(ROLE) == Role.FIT) & pl.col(SWEEP).is_not_null())
        if with_fit.height:
            sweep = with_fit.group_by(SWEEP).agg(pl.col("start_time").max()).sort(
                "start_time", descending=True, nulls_last=True)[SWEEP][0]
            mine = study.filter(pl.col(SWEEP) == sweep)
            fit = mine.filter(pl.col(ROLE) == Role.FIT)
            held = mine.filter(pl.col(ROLE) == Role.HELD_OUT)
            untagged = mine.height - fit.height - held.height
            note = (f"schedule study `{sweep}`: {fit.height} runs of role {Role.FIT} fitted, {held.height} of role "
                    f"{Role.HELD_OUT} predicted" + (f" ({untagged} runs with neither role left out)" if untagged else ""))
            return ScheduleRuns(tuple(fit["run_id"]), tuple(held["run_id"]), float(fit["N"][0]), float(fit["B"][0]),
                                sweep, note)
    done = from_scratch(finished(training_runs(runs))).drop_nulls(["N", "B"])
    done = done.with_columns(schedule=schedule_of(done)).sort("start_time", nulls_last=True)
    groups = (done.drop_nulls("schedule").group_by("N", "B")
              .agg(pl.len().alias("runs"), pl.col("schedule").n_unique().alias("n_schedules"),
                   pl.col("start_time").max())
              .filter(pl.col("n_schedules") >= 2)
              .sort(["runs", "start_time"], descending=True, nulls_last=True))
    if groups.height == 0:
        return None
    N, B = groups["N"][0], groups["B"][0]
    group = done.filter((pl.col("N") == N) & (pl.col("B") == B)).drop_nulls("schedule")
    firsts = group.unique("schedule", keep="first", maintain_order=True).head(SCHEDULES_FITTED)
    fit = [r for r in group["run_id"] if r in set(firsts["run_id"])]
    held = [r for r in group["run_id"] if r not in set(fit)]
    note = (f"no schedule study (design {Design.SCHEDULES}) in the selection: the largest group of one N and one batch "
            f"size under {groups['n_schedules'][0]} LR schedules, one run of each of {len(fit)} schedules fitted")
    return ScheduleRuns(tuple(fit), tuple(held), float(N), float(B), None, note)


def _check_law(law: str) -> None:
    if law not in LAW_DESIGNS:
        raise ValueError(f"law must be one of {LAWS}, got {law!r}")


@dataclass(frozen=True)
class CbsSettings:
    """What a batch-size warmup plan needs, read from the runs: the reference run's seq_len, D (tokens) and batch
    (tokens), and the granularity of its batches (micro_batch x devices x nodes). None where nothing records it."""

    seq_len: int | None
    total_tokens: float | None
    reference_B: float | None
    granularity: int | None
    start_sequences: int | None = None
    """The reference run's own (starting) batch in sequences: where a warmup that follows the CBS starts."""


def _one(source: pl.DataFrame, column: str) -> float | None:
    """The one value `source` records in `column`, or None where it records none or several."""
    if column not in source.columns or source.height == 0:
        return None
    found = source[column].cast(pl.Float64, strict=False).drop_nulls().unique().to_list()
    return found[0] if len(found) == 1 else None


def run_settings(runs: pl.DataFrame) -> tuple[int | None, int | None]:
    """(seq_len, granularity = micro_batch x devices x nodes) that all of `runs` record, None where they record none
    or disagree: what a plan for the next run (a batch warmup, a recipe) takes from the runs it rests on."""
    seq_len = _one(runs, "seq_len")
    micro = _one(runs, "param.batch.micro_batch")
    world = (_one(runs, "param.trainer.devices") or 1.0) * (_one(runs, "param.trainer.num_nodes") or 1.0)
    return (int(seq_len) if seq_len else None), (int(micro * world) if micro else None)


def cbs_settings(runs: pl.DataFrame, branches: Points) -> CbsSettings:
    """Settings of the warmup plan from the branches' reference run (found among `runs`) and the branches."""
    frame = branches.frame
    refs = [r for r in frame["reference"].unique().to_list() if r is not None] if frame.height else []
    ref = runs.filter(pl.col("run_id").is_in(refs)) if refs else runs.clear()
    source = ref if ref.height else branches.runs
    seq_len, granularity = run_settings(source)
    return CbsSettings(
        seq_len=seq_len,
        total_tokens=_one(source, "D") if ref.height else None,
        reference_B=recorded_reference_B(frame["B_ref"]) if frame.height else None,
        granularity=granularity,
        start_sequences=_start_sequences(ref))


def _start_sequences(ref: pl.DataFrame) -> int | None:
    """The batch (sequences) the reference run started with: batch.start_sequences of a ramp, else its batch."""
    start = _one(ref, "param.batch.start_sequences") or _one(ref, Param.B_SEQUENCES)
    return int(start) if start else None
