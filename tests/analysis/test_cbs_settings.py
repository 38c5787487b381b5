"""lab-fit cbs takes the batch granularity and the starting batch of its warmup from the reference run, so it
proposes the warmup the demo proposes on the same runs (issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.cli import main
from tracking.record import Metric, Param, Tag

SEQ_LEN, REF_SEQUENCES, MICRO = 64, 4, 4


def true_cbs(D):
    return 2.0 ** 13 * -np.expm1(-(np.asarray(D) / 2e4) ** 0.8)


@pytest.fixture(scope="module")
def branch_store(tmp_path_factory, new_experiment) -> str:
    from mlflow.entities import Metric as M, Param as P

    uri, client, exp = new_experiment(tmp_path_factory.mktemp("cbs"), "demo")

    def record(name: str, params: dict, tags: dict, loss: float, tokens: float) -> str:
        run_id = client.create_run(exp, run_name=name, tags={Tag.SWEEP: "cbs", **tags}).info.run_id
        client.log_batch(run_id, params=[P(k, str(v)) for k, v in params.items()],
                         metrics=[M(Metric.VAL_LOSS, loss, 0, 1), M(Metric.TOKENS, tokens, 0, 1)])
        client.set_terminated(run_id, "FINISHED")
        return run_id

    D = 2 ** 18
    ref = record("reference", {Param.N: 4000, Param.SEQ_LEN: SEQ_LEN, Param.D: D,
                               Param.B_TOKENS: REF_SEQUENCES * SEQ_LEN, Param.B_SEQUENCES: REF_SEQUENCES,
                               "batch.micro_batch": MICRO, "trainer.devices": 1, "trainer.num_nodes": 1,
                               Param.LR: 3e-3}, {}, 3.0, D)
    for T in 2.0 ** np.arange(13, 18):
        ref_loss = 3.0 + 10 * T ** -0.3
        for b in (4, 8, 16, 32, 64, 128):
            B = b * SEQ_LEN
            record(f"branch-T{T:g}-B{B}", {Param.N: 4000, Param.SEQ_LEN: SEQ_LEN, Param.B_TOKENS: B,
                                           Param.B_SEQUENCES: b, "batch.micro_batch": MICRO, Param.LR: 3e-3},
                   {Tag.BRANCH_OF: ref, Tag.CHECKPOINT_TOKENS: str(int(T))},
                   ref_loss * (1 + 0.01 * B / true_cbs(T)), T + 2 ** 15)
    return uri


def test_the_warmup_starts_at_the_reference_batch_in_its_granularity(branch_store, tmp_path, capsys):
    out = tmp_path / "cbs.json"
    code = main(["cbs", "--tracking-uri", branch_store, "--bootstrap", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    warmup = json.loads(out.read_text())["warmup"]
    assert warmup["start_sequences"] == REF_SEQUENCES  # not lab's default micro-batch (8)
    assert warmup["seq_len"] == SEQ_LEN
    assert all(s % MICRO == 0 for _, s in warmup["milestones"])
    assert warmup["milestones"] and warmup["milestones"][0][1] == 2 * REF_SEQUENCES
    assert "the reference run's" in err


def test_arguments_still_win_over_the_reference_run(branch_store, tmp_path, capsys):
    out = tmp_path / "cbs.json"
    code = main(["cbs", "--tracking-uri", branch_store, "--bootstrap", "0", "--granularity", "8",
                 "--start-sequences", "8", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["warmup"]["start_sequences"] == 8
