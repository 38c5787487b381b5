"""data=builtin data.tokenizer=bpe: a BPE trained once on the built-in corpus, cached, and trained on."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lab.config import ConfigError
from lab.data import builtin_corpus, load_tokens
from lab.data.subword import builtin_subword
from lab.run import train
from lab.train import compose_config
from tracking.record import Metric, Param

SOURCE = "def f{i}(x):\n    return x * {i} + sum(range({i}))\n\n\nclass C{i}:\n    value = 'text {i}'\n"


def test_bpe_of_a_corpus_is_trained_once_and_cached(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(60):
        (root / f"m{i}.py").write_text(SOURCE.format(i=i) * 3)
    files = builtin_corpus(tmp_path / "cache", val_fraction=0.2, root=root)
    sub = builtin_subword(files, 300)
    train_tokens, val_tokens = np.asarray(load_tokens(sub.train)), np.asarray(load_tokens(sub.val))
    assert train_tokens.max() < 300 and len(train_tokens) < len(load_tokens(files.train)) / 2
    assert (train_tokens == 0).sum() == (np.asarray(load_tokens(files.train)) == 0).sum(), "one end-of-text per file"
    assert sub.bytes_per_token == pytest.approx(len(load_tokens(files.val)) / len(val_tokens))
    mtime = sub.train.stat().st_mtime_ns
    time.sleep(0.01)
    again = builtin_subword(files, 300)
    assert again == sub and sub.train.stat().st_mtime_ns == mtime, "a cache hit rewrites nothing"


def test_training_on_the_builtin_corpus_with_bpe(tmp_path):
    cfg = compose_config(["experiment=smoke", "data.tokenizer=bpe", "data.vocab_size=512", "data.max_bytes=200000",
                          f"data.cache_dir={tmp_path}/cache", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                          f"checkpoint_dir={tmp_path}/ckpt", "budget.tokens=2560", "trainer.val_every_steps=5",
                          "trainer.checkpoint_every_steps=5", "trainer.progress_bar=false", "trainer.threads=1"])
    assert cfg.model.vocab_size == 512, "the model's vocabulary follows data.vocab_size"
    result = train(cfg)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert result.status == "FINISHED" and run.inputs.dataset_inputs[0].dataset.name.endswith("-bpe512")
    val, bpb = run.data.metrics[Metric.VAL_LOSS], run.data.metrics[Metric.VAL_BPB]
    # 255 merges on 190 kB of Python source: ~1.4 bytes per token (indentation and keywords merge first).
    assert bpb < val / math.log(2) / 1.2, "a BPE token holds more than one byte: bpb divides by bytes per token"
    bytes_cfg = compose_config(["experiment=smoke", "data.max_bytes=200000", f"data.cache_dir={tmp_path}/cache"])
    assert bytes_cfg.model.vocab_size == 256 and len(run.data.params[Param.DATA_DIGEST]) == 64


@pytest.mark.parametrize("bad, named", [
    (["data.tokenizer=bpe"], "data.vocab_size=None"),
    (["data.tokenizer=bpe", "data.vocab_size=1024", "model.vocab_size=300"], "model.vocab_size=300"),
    (["data.vocab_size=1024"], "data.tokenizer=bpe"),
])
def test_bad_subword_settings_fail_at_compose_time(bad, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        compose_config(["experiment=smoke", *bad])
