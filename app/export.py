"""Serialising what the dashboard shows: laws as JSON, tables as CSV/Parquet, figures as HTML or PNG.

PNG goes through kaleido (1.x), which drives a Chrome/Chromium it finds on PATH (Debian's `chromium` here) or
at $BROWSER_PATH; it is optional: without it the Export page offers HTML, which keeps the interactive figure.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import re
import zipfile
import json
import os
import shutil
from typing import Any

import plotly.graph_objects as go
import polars as pl

from analysis.serialize import jsonable

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def laws_json(laws: dict[str, Any]) -> bytes:
    """Strict JSON (NaN/inf as null) of {name: law dict}."""
    return (json.dumps(jsonable(laws), indent=2) + "\n").encode()


def table_bytes(df: pl.DataFrame, fmt: str) -> bytes:
    """The frame as CSV or Parquet bytes."""
    buffer = io.BytesIO()
    if fmt == "csv":
        df.write_csv(buffer)
    elif fmt == "parquet":
        df.write_parquet(buffer)
    else:
        raise ValueError(f"table format must be 'csv' or 'parquet', got {fmt!r}")
    return buffer.getvalue()


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained HTML page (plotly.js embedded, so it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


def png_support() -> tuple[bool, str]:
    """(available, why not): PNG export needs the kaleido package and a Chrome/Chromium browser."""
    if importlib.util.find_spec("kaleido") is None:
        return False, "PNG export needs the kaleido package (pip install kaleido) and Chromium; HTML is offered"
    if os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in BROWSERS):
        return True, ""
    return False, "PNG export needs Chromium or Chrome on PATH (or $BROWSER_PATH) for kaleido; HTML is offered"


def figure_png(fig: go.Figure, width: int = 1200, height: int = 600) -> bytes:
    """PNG bytes rendered by kaleido in headless Chromium (a few seconds for the first figure)."""
    return fig.to_image(format="png", width=width, height=height, scale=2)


PACKAGE = "scaling-lab"


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "not installed"


def with_provenance(law: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The law's dict with where it comes from: store, sweep, filters, run ids, settings, package version."""
    return {**law, "provenance": {**provenance, "package": PACKAGE, "version": package_version()}}


def is_stale(provenance: dict[str, Any], uri: str, filters: dict[str, Any]) -> bool:
    """A law fitted on another store or under other filters than those in force now: never exported."""
    if provenance.get("store") is None:  # fitted on a table: the sidebar's store and filters do not apply
        return False
    return provenance.get("store") != uri or provenance.get("filters", {}) != filters


def file_name(section: str, name: str, extension: str) -> str:
    """`<section>-<name>.<ext>` in lower case with dashes: distinct across pages (two pages' "runs" differ)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{section}-{name}".lower()).strip("-")
    return f"{slug}.{extension}"


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """One ZIP archive of {file name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()
