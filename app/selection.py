"""Which runs feed a law page's fit, chosen by default as `lab-fit --sweep` would be given, and said on the page.

Each law page fits, by default, the most recent sweep whose design is made for its law (analysis.points:
IsoFLOP/grid for the loss laws, lr x B for the hyperparameters, CBS branches for the critical batch size), so
that the page and `lab-fit loss|hparams|cbs --sweep <that sweep>` fit the same points. The picker offers the other
sweeps and "all runs passing the filters"; a deep link `?sweep=ID` opens a page on that sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import streamlit as st

from analysis import points
from analysis.lineage import mixed_data_warning
from analysis.points import DESIGN, SWEEP, Points
from app import data, pages

ALL = "all runs passing the filters"


@dataclass(frozen=True)
class Selection:
    """The points of a law on a page, the sweep they were taken from (None: every run passing the filters) and the
    filters in force, for the fit's caption and its export's provenance."""

    law: str
    points: Points
    sweep: str | None
    filters: dict

    def provenance(self, uri: str, settings: dict | None = None) -> dict:
        """What an export must say about where its numbers come from (app.export.provenance adds the rest)."""
        return {"store": uri, "law": self.law, "sweep": self.sweep, "filters": self.filters,
                "run_ids": sorted(self.points.run_ids), "settings": settings or {}}


def pick(runs: pl.DataFrame, law: str, key: str) -> Selection:
    """The sweep picker of a law page and its points. Default: the most recent sweep made for the law, or every run
    passing the filters when no run records such a design (runs trained by hand)."""
    made_for = points.sweeps_for(runs, law)
    others = sorted(s for s in runs[SWEEP].drop_nulls().unique().to_list() if s not in made_for)
    options = [*made_for, *others, ALL]
    wanted = st.query_params.get("sweep")  # a deep link to a sweep made for this law; other sweeps are picked here
    index = made_for.index(wanted) if wanted in made_for else (0 if made_for else len(options) - 1)
    designs = dict(runs.select(SWEEP, DESIGN).drop_nulls(SWEEP).unique(SWEEP).iter_rows()) \
        if DESIGN in runs.columns else {}
    sweep = st.selectbox(
        "Sweep fitted", options, index=index, key=f"{key}_sweep",
        format_func=lambda s: s if s == ALL else f"{s} (design {designs.get(s) or 'not recorded'})",
        help=f"By default the most recent sweep whose design is made for this law ({', '.join(points.LAW_DESIGNS[law])}"
             "), as `lab-fit --sweep` would be given; the runs also pass the sidebar's filters")
    chosen = runs if sweep == ALL else runs.filter(pl.col(SWEEP) == sweep)
    found = data.law_points(chosen, law)
    filters = {k.removeprefix("filter_"): v for k, v in st.session_state.items()
               if isinstance(k, str) and k.startswith("filter_") and v}
    return Selection(law, found, None if sweep == ALL else sweep, filters)


def show_feed(selection: Selection) -> None:
    """Which runs feed the fit (count, sweep, a link to them on the Runs page), what was left out and why, and a
    warning where the points mix designs, sweeps, reference runs, data or tokenizers (analysis.lineage)."""
    found = selection.points
    n = found.frame["run_id"].n_unique() if found.frame.height else 0
    where = f"sweep `{selection.sweep}`" if selection.sweep else f"{len(found.sweeps)} sweeps {found.sweeps[:4]}"
    c1, c2 = st.columns([4, 1])
    c1.caption(f"**{n} runs** of {where} feed this fit.")
    if selection.sweep:
        c2.page_link(pages.RUNS.path, label="See them on Runs", query_params={"sweep": selection.sweep})
    for note in found.notes:
        st.caption(note)
    for warning in found.mixed:
        st.warning(warning)
    mixed_data = mixed_data_warning(found.runs)  # issue 18's lineage: one law, one corpus and tokenizer
    if mixed_data is not None:
        st.warning(mixed_data.removeprefix("warning: "))
