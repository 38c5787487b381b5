"""analysis.lineage: runs of one law from different data or tokenizers are named before a fit."""

from __future__ import annotations

import numpy as np
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


def test_lab_fit_warns_when_a_law_mixes_tokenizations(tmp_path, new_experiment, capsys):
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import Param as MlflowParam

    from analysis.cli import main
    from tracking.record import Metric, Param

    uri, client, exp = new_experiment(tmp_path, "mixed")
    for i, N in enumerate(np.geomspace(1e5, 1e7, 4)):
        for j, D in enumerate(np.geomspace(2e6, 2e9, 4)):
            run_id = client.create_run(exp, run_name=f"N{N:.2g}-D{D:.2g}").info.run_id
            tokenizer = "t1" if (i + j) % 2 else "t2"  # half the points from another tokenization
            params = {Param.N: int(N), Param.N_TOTAL: int(N), Param.SEQ_LEN: 64, Param.B_TOKENS: 512,
                      Param.B_SEQUENCES: 8, Param.LR: 3e-3, Param.DATA_DIGEST: tokenizer * 32,
                      Param.DATA_NAME: f"web-{tokenizer}", Param.TOKENIZER_DIGEST: tokenizer}
            loss = 1.5 + 300 / N**0.3 + 900 / D**0.35
            client.log_batch(run_id, metrics=[MlflowMetric(Metric.TOKENS, D, 0, 1), MlflowMetric(Metric.VAL_LOSS, loss, 0, 1)],
                             params=[MlflowParam(k, str(v)) for k, v in params.items()])
            client.set_terminated(run_id)
    code = main(["loss", "--tracking-uri", uri, "--experiment", "mixed", "--bootstrap", "0", "--out",
                 str(tmp_path / "fit.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: these runs trained on 2 tokenizers" in err and "web-t1" in err and "8 runs" in err
