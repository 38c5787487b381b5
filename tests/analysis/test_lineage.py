"""analysis.lineage: runs of one law from different data or tokenizers are named before a fit."""

from __future__ import annotations

import polars as pl

from analysis.lineage import DIGEST, NAME, TOKENIZER, data_groups, mixed_data_warning


def runs(*rows: tuple[str | None, str | None, str | None]) -> pl.DataFrame:
    return pl.DataFrame([{"run_id": f"r{i}", DIGEST: d, NAME: n, TOKENIZER: t} for i, (d, n, t) in enumerate(rows)],
                        schema={"run_id": pl.String, DIGEST: pl.String, NAME: pl.String, TOKENIZER: pl.String})


def test_one_dataset_gives_no_warning_and_unrecorded_runs_are_left_aside():
    frame = runs(("a" * 64, "web", "t1"), ("a" * 64, "web", "t1"), (None, None, None))
    assert mixed_data_warning(frame) is None
    assert data_groups(frame).to_dicts() == [{"digest": "a" * 64, "name": "web", "tokenizer": "t1", "runs": 2}]
    assert mixed_data_warning(pl.DataFrame({"run_id": ["r0"]})) is None, "stores from before lineage: nothing to say"


def test_two_tokenizations_are_named_with_their_run_counts():
    frame = runs(("a" * 64, "web-bpe4k", "t1"), ("a" * 64, "web-bpe4k", "t1"), ("b" * 64, "web-bpe32k", "t2"))
    warning = mixed_data_warning(frame)
    assert warning is not None and "2 tokenizers" in warning
    assert "web-bpe4k (aaaaaaaaaaaa, tokenizer t1): 2 runs" in warning and "web-bpe32k" in warning


def test_two_corpora_with_one_tokenizer_are_named():
    warning = mixed_data_warning(runs(("a" * 64, "web", "t1"), ("b" * 64, "code", "t1")))
    assert warning is not None and "2 datasets" in warning and "not points of one law" in warning
