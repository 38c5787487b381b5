"""lab-data prepare: text, JSONL, Parquet and a local `datasets` directory → shards + manifest → training."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis.lineage import data_groups
from analysis.load import load_runs
from lab.config import ConfigError
from lab.data import load_token_files, load_tokens
from lab.data.manifest import read_manifest
from lab.run import train
from lab.shards.cli import main as lab_data
from lab.shards.writer import KILL_AFTER_SHARDS_ENV
from lab.train import compose_config
from tracking.record import Metric, Param

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there their one all we can has been if more when will would who so no").split()


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 120))).capitalize() + "." for _ in range(n)]


def write_inputs(root: Path, kind: str, docs: list[str]) -> str:
    """Write docs as text files, one JSONL or one Parquet file (column 'body'); returns the --input spec."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        for i, doc in enumerate(docs):
            (root / f"doc{i:03d}.txt").write_text(doc)
        return str(root / "*.txt")
    if kind == "jsonl":
        (root / "docs.jsonl").write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)))
        return str(root / "docs.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), root / "docs.parquet")
    return str(root / "docs.parquet")


def prepare_args(spec: str, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--input", spec, "--out", str(out), "--val-fraction", "0.2", "--no-progress", *extra]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def train_overrides(workdir: Path, manifest: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", "data=tokens", f"data.manifest={manifest}", "data.val_sequences=4",
            f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt", "budget.tokens=2560",
            "trainer.val_every_steps=5", "trainer.checkpoint_every_steps=5", "trainer.progress_bar=false",
            "trainer.threads=1", *extra]


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_inputs_to_shards_to_training(tmp_path, kind, monkeypatch):
    spec = write_inputs(tmp_path / "docs", kind, documents(30))
    monkeypatch.chdir(tmp_path)
    extra = () if kind == "text" else ("--text-column", "body")
    lab_data(prepare_args(spec, Path("shards"), "--tokenizer", "bpe", "--vocab-size", "4096", "--shard-tokens", "500",
                          *extra))
    m = read_manifest("shards/manifest.json")
    assert m.splits["train"].documents + m.splits["val"].documents == 30 and m.splits["val"].documents > 0
    assert 256 < m.vocab_size <= 4096 and m.tokenizer["kind"] == "bpe" and len(m.splits["train"].shards) > 1
    train_tokens = load_token_files(m.splits["train"].shards)
    assert len(train_tokens) == m.splits["train"].tokens and int(train_tokens[0]) == m.eos_id
    assert m.bytes_per_token > 2, "a BPE of English words holds several bytes per token"

    cfg = compose_config(train_overrides(tmp_path, Path("shards/manifest.json")))
    assert cfg.model.vocab_size == m.vocab_size, "model.vocab_size comes from the manifest"
    result = train(cfg)
    assert result.status == "FINISHED"
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert run.data.params[Param.DATA_DIGEST] == m.digest and run.data.params["model.vocab_size"] == str(m.vocab_size)
    assert run.data.metrics[Metric.VAL_BPB] == pytest.approx(run.data.metrics[Metric.VAL_LOSS] / np.log(2) / m.bytes_per_token)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "shards" and m.digest.startswith(dataset_input.dataset.digest)
    groups = data_groups(load_runs(f"sqlite:///{tmp_path}/mlflow.db", "smoke"))  # what lab-fit checks before a fit
    assert groups.to_dicts() == [{"digest": m.digest, "name": "shards", "tokenizer": m.tokenizer["digest"], "runs": 1}]


def test_headline_command_line(tmp_path):
    """Exactly the README's spelling, through the command line."""
    write_inputs(tmp_path / "docs", "text", documents(40, seed=1))
    proc = subprocess.run([sys.executable, "-m", "lab.shards.cli", "prepare", "--input", "docs/*.txt", "--tokenizer",
                           "bpe", "--vocab-size", "4096", "--out", "shards/"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "shards/manifest.json").is_file() and "data.manifest=shards/manifest.json" in proc.stdout
    assert "tok/s" in proc.stderr, "a progress bar with tokens/s"


def test_100k_vocabulary_round_trips_through_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(100_000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    rng = random.Random(0)
    docs = [" ".join(f"w{rng.randrange(100_000)}" for _ in range(50)) for _ in range(20)]
    spec = write_inputs(tmp_path / "docs", "jsonl", docs)
    lab_data(prepare_args(spec, tmp_path / "out", "--text-column", "body", "--tokenizer", str(tmp_path / "tokenizer.json")))
    m = read_manifest(tmp_path / "out")
    assert m.vocab_size == 100_002 and m.eos_id == 0
    header = np.fromfile(m.splits["train"].shards[0], dtype="<i4", count=3)
    assert header[:2].tolist() == [20240801, 7], "llm.c's uint32 shard"
    decoded = []
    for split in ("train", "val"):
        tokens = np.asarray(load_tokens(m.splits[split].shards[0])[:])
        assert tokens.dtype == np.uint32
        pieces = np.split(tokens, np.flatnonzero(tokens == m.eos_id))[1:]  # each document starts with end-of-text
        decoded += [tokenizer.decode(piece[1:].tolist()) for piece in pieces]
    assert sorted(decoded) == sorted(docs) and max(int(t) for t in np.asarray(load_tokens(m.splits["train"].shards[0])[:])) > 65_535


def test_killed_run_resumes_into_identical_shards(tmp_path):
    spec = write_inputs(tmp_path / "docs", "text", documents(60, seed=2))
    args = prepare_args(spec, tmp_path / "resumed", "--tokenizer", "bpe", "--vocab-size", "500", "--shard-tokens", "700")
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_AFTER_SHARDS_ENV: "3"}
    killed = subprocess.run([sys.executable, "-m", "lab.shards.cli", *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert len(list((tmp_path / "resumed").glob("*.bin"))) == 3 and not (tmp_path / "resumed/manifest.json").exists()
    env.pop(KILL_AFTER_SHARDS_ENV)
    resumed = subprocess.run([sys.executable, "-m", "lab.shards.cli", *args], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and "resuming after 3 complete shards" in resumed.stderr, resumed.stderr

    lab_data(prepare_args(spec, tmp_path / "fresh", "--tokenizer", "bpe", "--vocab-size", "500", "--shard-tokens", "700"))
    lab_data(prepare_args(spec, tmp_path / "parallel", "--tokenizer", "bpe", "--vocab-size", "500", "--shard-tokens",
                          "700", "--workers", "2"))
    fresh = shard_bytes(tmp_path / "fresh")
    assert len(fresh) > 4 and shard_bytes(tmp_path / "resumed") == fresh == shard_bytes(tmp_path / "parallel")
    digests = {read_manifest(tmp_path / d).digest for d in ("fresh", "resumed", "parallel")}
    assert len({read_manifest(tmp_path / d).splits["train"].tokens for d in ("fresh", "resumed")}) == 1
    assert len(digests) == 3, "the manifests differ only in their names (the output directories)"
    assert (tmp_path / "fresh/tokenizer.json").read_bytes() == (tmp_path / "resumed/tokenizer.json").read_bytes()


def test_local_datasets_directory_stands_in_for_the_hub(tmp_path):
    pytest.importorskip("datasets")
    docs = documents(25, seed=3)
    write_inputs(tmp_path / "dataset", "jsonl", docs)
    spec_jsonl = write_inputs(tmp_path / "plain", "jsonl", docs)
    lab_data(prepare_args(f"hf:{tmp_path / 'dataset'}", tmp_path / "hf", "--text-column", "body", "--tokenizer", "bytes"))
    lab_data(prepare_args(spec_jsonl, tmp_path / "jsonl", "--text-column", "body", "--tokenizer", "bytes"))
    assert shard_bytes(tmp_path / "hf") == shard_bytes(tmp_path / "jsonl")
    m = read_manifest(tmp_path / "hf")
    assert m.vocab_size == 257 and m.eos_id == 256
    assert m.splits["train"].bytes == sum(len(d.encode()) for d in docs) - m.splits["val"].bytes


def _bad_jsonl(tmp_path: Path) -> list[str]:
    return [write_inputs(tmp_path / "docs", "jsonl", documents(3)), "--tokenizer", "bytes"]  # column 'text' missing


def _empty(tmp_path: Path) -> list[str]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.txt").write_text("")
    (tmp_path / "docs/b.txt").write_text("  \n")
    return [str(tmp_path / "docs/*.txt"), "--tokenizer", "bpe", "--vocab-size", "300"]


def _unknown_tokenizer(tmp_path: Path) -> list[str]:
    return [write_inputs(tmp_path / "docs", "text", documents(3)), "--tokenizer", "gpt9"]


def _one_document(tmp_path: Path) -> list[str]:
    return [write_inputs(tmp_path / "docs", "text", documents(1)), "--tokenizer", "bytes"]


def _tiny_bpe(tmp_path: Path) -> list[str]:
    return [write_inputs(tmp_path / "docs", "text", documents(3)), "--tokenizer", "bpe", "--vocab-size", "100"]


def _unknown_tiktoken(tmp_path: Path) -> list[str]:
    pytest.importorskip("tiktoken")
    return [write_inputs(tmp_path / "docs", "text", documents(3)), "--tokenizer", "tiktoken:o900k"]


def _tokenizer_without_eos(tmp_path: Path) -> list[str]:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    return [write_inputs(tmp_path / "docs", "text", documents(3)), "--tokenizer", str(tmp_path / "tokenizer.json")]


def _no_files(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "nothing/*.txt"), "--tokenizer", "bytes"]


@pytest.mark.parametrize("make, message", [
    (_bad_jsonl, "no column 'text' (it has id, body). Fix: name the text column with --text-column"),
    (_empty, "the input holds no text"),
    (_unknown_tokenizer, "unknown tokenizer 'gpt9'"),
    (_no_files, "matches no files"),
    (_one_document, "the input holds one document"),
    (_unknown_tiktoken, "unknown tiktoken encoding 'o900k'"),
    (_tokenizer_without_eos, "has no end-of-text token among <|endoftext|>"),
    (_tiny_bpe, "--vocab-size 100 is too small"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, make, message):
    spec, *rest = make(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        lab_data(["prepare", "--input", spec, "--out", str(tmp_path / "out"), *rest])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_model_vocabulary_smaller_than_the_data_fails_before_anything_is_recorded(tmp_path):
    spec = write_inputs(tmp_path / "docs", "text", documents(20))
    lab_data(prepare_args(spec, tmp_path / "shards", "--tokenizer", "bytes"))
    with pytest.raises(ConfigError, match=r"model.vocab_size=200.*the data has 257 token ids"):
        compose_config(train_overrides(tmp_path, tmp_path / "shards/manifest.json", "model.vocab_size=200"))
    padded = compose_config(train_overrides(tmp_path, tmp_path / "shards/manifest.json", "model.vocab_size=320"))
    assert padded.model.vocab_size == 320, "a model vocabulary above the data's (padding) is kept"
    assert not (tmp_path / "mlflow.db").exists()


def test_an_edited_manifest_is_refused(tmp_path):
    spec = write_inputs(tmp_path / "docs", "text", documents(20))
    lab_data(prepare_args(spec, tmp_path / "shards", "--tokenizer", "bytes"))
    path = tmp_path / "shards/manifest.json"
    doc = json.loads(path.read_text())
    doc["vocab_size"] = 100
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="data.manifest.*digest does not match"):
        compose_config(train_overrides(tmp_path, path))
