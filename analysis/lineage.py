"""Which data the runs of one law trained on: a law fitted across corpora or tokenizations mixes units.

Losses in nats per token from two tokenizers are not comparable (a token holds a different number of bytes), and
two corpora have different irreducible losses E; a fit across them is wrong without saying so. Every run records
its data's digest and its tokenizer's digest (``lab.lineage``, params ``Param.DATA_DIGEST`` and
``Param.TOKENIZER_DIGEST``); runs recorded before that carry neither and are counted apart.
"""

from __future__ import annotations

from typing import Optional

import polars as pl

from tracking.record import Param

DIGEST = f"param.{Param.DATA_DIGEST}"
NAME = f"param.{Param.DATA_NAME}"
TOKENIZER = f"param.{Param.TOKENIZER_DIGEST}"


def data_groups(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (data digest, tokenizer digest) among ``runs`` (a runs frame): its name and how many runs."""
    if DIGEST not in runs.columns:
        return pl.DataFrame(schema={"digest": pl.String, "name": pl.String, "tokenizer": pl.String, "runs": pl.UInt32})
    cols = [pl.col(DIGEST).cast(pl.String).alias("digest"),
            (pl.col(NAME).cast(pl.String) if NAME in runs.columns else pl.lit(None, pl.String)).alias("name"),
            (pl.col(TOKENIZER).cast(pl.String) if TOKENIZER in runs.columns else pl.lit(None, pl.String)).alias("tokenizer")]
    known = runs.select(cols).filter(pl.col("digest").is_not_null())
    return known.group_by("digest", "tokenizer").agg(pl.col("name").first(), pl.len().alias("runs")).sort(
        "runs", "digest", descending=[True, False]).select("digest", "name", "tokenizer", "runs")


def mixed_data_warning(runs: pl.DataFrame) -> Optional[str]:
    """A one-line warning when ``runs`` come from more than one data digest or tokenizer, else None."""
    groups = data_groups(runs)
    if groups.height <= 1:
        return None
    tokenizers = groups["tokenizer"].drop_nulls().n_unique()
    shown = "; ".join(f"{row['name'] or '?'} ({row['digest'][:12]}, tokenizer {str(row['tokenizer'])[:12]}): "
                      f"{row['runs']} runs" for row in groups.head(4).iter_rows(named=True))
    what = f"{tokenizers} tokenizers" if tokenizers > 1 else f"{groups.height} datasets"
    return (f"warning: these runs trained on {what} ({shown}); their losses are not points of one law. Select one "
            "dataset's runs (--experiment / --sweep) or train them all on the same data")
