"""Tests for lab.data: the built-in corpus, token files, deterministic resumable sampling, validation set."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lab.data import (
    DOC_SEPARATOR,
    LLMC_MAGIC,
    StepBatches,
    TokenFileError,
    TokenSampler,
    TokenStream,
    bits_per_byte,
    builtin_corpus,
    is_validation,
    list_sources,
    load_tokens,
    stdlib_root,
    validation_set,
    write_llmc_shard,
    write_tokens_bin,
)

SEQ_LEN = 8


def documents(path: Path) -> list[bytes]:
    """Split a byte-level token file back into its source files (each ends with the separator)."""
    data = np.fromfile(path, dtype="<u2")
    assert data.max() < 256
    raw = data.astype(np.uint8).tobytes()
    assert raw.endswith(bytes([DOC_SEPARATOR]))
    return raw[:-1].split(bytes([DOC_SEPARATOR]))


@pytest.fixture(scope="module")
def stdlib_corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, builtin_corpus(cache)


@pytest.fixture
def source_tree(tmp_path) -> Path:
    """A small tree of *.py files with distinct contents, including directories the corpus must skip."""
    root = tmp_path / "src"
    for i in range(60):
        path = root / f"pkg{i % 4}" / f"mod{i:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\nVALUE = {i * 7}\n" + "x = 1\n" * (i % 5))
    for skipped in ("site-packages/other.py", "test/test_mod.py", "pkg0/tests/test_x.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("SKIPPED = True\n")
    (root / "pkg0" / "notes.txt").write_text("not python\n")
    return root


@pytest.fixture
def positions() -> np.ndarray:
    """Tokens equal to their own index, so a sequence's first token is its offset."""
    return np.arange(5000, dtype=np.uint16)


# --- built-in corpus -------------------------------------------------------------------------------------------


def test_builtin_corpus_builds_from_the_stdlib(stdlib_corpus):
    _, files = stdlib_corpus
    train, val = load_tokens(files.train), load_tokens(files.val)
    assert files.vocab_size == 256 and files.bytes_per_token == 1.0
    assert len(train) > 5_000_000 and len(val) > 50_000  # ~12 MB of library source, ~5% of files held out
    assert train.dtype == np.uint16 and int(train.max()) < 256
    sources = list_sources(stdlib_root())
    n_val = sum(is_validation(s.relpath, 0.05) for s in sources)
    assert len(documents(files.val)) == n_val and len(documents(files.train)) == len(sources) - n_val
    assert not any("site-packages" in s.relpath or "/test/" in f"/{s.relpath}" for s in sources)


def test_builtin_corpus_second_call_hits_the_cache(stdlib_corpus):
    cache, files = stdlib_corpus
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (files.train, files.val)}
    again = builtin_corpus(cache)
    assert again == files
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (again.train, again.val)} == before
    assert sorted(os.listdir(cache)) == sorted([files.train.name, files.val.name])  # no temporary files left


def test_builtin_corpus_is_deterministic_across_caches(tmp_path):
    a = builtin_corpus(tmp_path / "a", max_bytes=300_000)
    b = builtin_corpus(tmp_path / "b", max_bytes=300_000)
    assert a.train.name == b.train.name
    assert a.train.read_bytes() == b.train.read_bytes() and a.val.read_bytes() == b.val.read_bytes()


def test_builtin_corpus_max_bytes_caps_source_bytes(tmp_path, stdlib_corpus):
    files = builtin_corpus(tmp_path, max_bytes=300_000)
    # Each split holds its byte budget plus one separator per document; validation gets 5% of the bytes.
    assert len(load_tokens(files.val)) == 15_000 + len(documents(files.val))
    assert len(load_tokens(files.train)) == 285_000 + len(documents(files.train))
    assert files.train.name != stdlib_corpus[1].train.name  # the fingerprint covers max_bytes


def test_split_is_by_path_hash_and_disjoint(tmp_path, source_tree):
    files = builtin_corpus(tmp_path / "cache", val_fraction=0.3, root=source_tree)
    sources = list_sources(source_tree)
    assert len(sources) == 60  # skipped dirs and non-.py files are left out
    contents = {s.relpath: (source_tree / s.relpath).read_bytes() for s in sources}
    train, val = documents(files.train), documents(files.val)
    expected_val = [contents[r] for r in sorted(contents) if is_validation(r, 0.3)]
    expected_train = [contents[r] for r in sorted(contents) if not is_validation(r, 0.3)]
    assert val == expected_val and train == expected_train  # sorted path order, split by path hash
    assert 0 < len(val) < len(train) and not set(val) & set(train)
    # A larger val_fraction only moves files into validation (the hash threshold rises), never out of it.
    assert set(expected_val) <= {contents[r] for r in contents if is_validation(r, 0.5)}


def test_builtin_corpus_rejects_bad_parameters(tmp_path, source_tree):
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        builtin_corpus(tmp_path, val_fraction=1.5, root=source_tree)
    with pytest.raises(ValueError, match="max_bytes=0"):
        builtin_corpus(tmp_path, max_bytes=0, root=source_tree)
    assert not any(is_validation(s.relpath, 0.001) for s in list_sources(source_tree))
    with pytest.raises(ValueError, match="validation split got no files.*val_fraction=0.001"):
        builtin_corpus(tmp_path, val_fraction=0.001, root=source_tree)
    with pytest.raises(ValueError, match="training split got no files.*raise max_bytes"):
        builtin_corpus(tmp_path, max_bytes=1, root=source_tree)  # the one byte goes to validation
    with pytest.raises(ValueError, match="no \\*.py files"):
        builtin_corpus(tmp_path, root=tmp_path / "empty_dir_that_does_not_exist")


# --- token files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_tokens_bin, write_llmc_shard])
def test_token_formats_round_trip(tmp_path, writer):
    tokens = np.array([0, 1, 255, 256, 50256, 65535, 7], dtype=np.int64)
    path = writer(tmp_path / "data.bin", tokens)
    loaded = load_tokens(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, tokens)


def test_llmc_shard_layout_matches_the_reference_format(tmp_path):
    path = write_llmc_shard(tmp_path / "shard.bin", [5, 6, 7])
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [LLMC_MAGIC, 1, 3] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * 3


def test_glob_concatenates_shards_in_sorted_order(tmp_path):
    write_llmc_shard(tmp_path / "train_001.bin", np.arange(100, 130))
    write_llmc_shard(tmp_path / "train_000.bin", np.arange(0, 100))
    write_tokens_bin(tmp_path / "train_002.bin", np.arange(130, 135))  # formats may mix
    stream = load_tokens(tmp_path / "train_*.bin")
    assert isinstance(stream, TokenStream) and len(stream) == 135
    np.testing.assert_array_equal(stream[95:133], np.arange(95, 133))  # spans all three files
    np.testing.assert_array_equal(stream[:], np.arange(135))
    assert stream[-1] == 134 and stream[100] == 100 and len(stream[50:50]) == 0


def _write_header(path: Path, words: list[int], n_tokens: int) -> Path:
    header = np.zeros(256, dtype="<i4")
    header[: len(words)] = words
    path.write_bytes(header.tobytes() + np.zeros(n_tokens, dtype="<u2").tobytes())
    return path


def test_unsupported_shard_version_is_named(tmp_path):
    path = _write_header(tmp_path / "v2.bin", [LLMC_MAGIC, 2, 10], 10)
    with pytest.raises(TokenFileError, match="unsupported llm.c shard version 2") as err:
        load_tokens(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("n_tokens", [40, 80])  # the count matches the size at 2 and at 4 bytes per token
def test_wrong_magic_on_a_shard_like_header_is_named(tmp_path, n_tokens):
    path = _write_header(tmp_path / "shard_000.bin", [12345, 7, 40], n_tokens)
    with pytest.raises(TokenFileError, match="wrong magic: header word 0 is 12345.*needs 20240520 or 20240801") as err:
        load_tokens(path)
    assert str(path) in str(err.value)


def test_uint32_shards_round_trip_and_mix_with_uint16_ones(tmp_path):
    big = np.array([0, 65535, 65536, 100_000, 2**32 - 1], dtype=np.int64)
    path = write_llmc_shard(tmp_path / "train_000.bin", big)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240801, 7, 5] and path.stat().st_size == 1024 + 4 * 5  # llm.c's Llama 3 layout
    tokens = load_tokens(path)
    assert tokens.dtype == np.dtype("<u4")
    np.testing.assert_array_equal(tokens, big)
    # The vocabulary, not the largest id, decides the width: a 100k tokenizer's shard is uint32 even if its ids are small.
    small = write_llmc_shard(tmp_path / "train_001.bin", [1, 2, 3], vocab_size=100_000)
    assert small.stat().st_size == 1024 + 4 * 3
    assert write_llmc_shard(tmp_path / "u16.bin", [1, 2, 3], vocab_size=65_536).stat().st_size == 1024 + 2 * 3
    stream = load_tokens(tmp_path / "train_*.bin")
    assert stream[:].tolist() == big.tolist() + [1, 2, 3]
    with pytest.raises(ValueError, match="token id 5 does not fit vocab_size=5"):
        write_llmc_shard(tmp_path / "bad.bin", [5], vocab_size=5)


def test_truncated_uint32_shard_is_named(tmp_path):
    path = write_llmc_shard(tmp_path / "cut.bin", [70_000] * 10)
    with open(path, "r+b") as handle:
        handle.truncate(1024 + 4 * 6 + 1)
    with pytest.raises(TokenFileError, match=r"truncated: header says 10 tokens, file holds 6 and 1 stray byte \(32-bit"):
        load_tokens(path)


def test_truncated_shard_reports_header_and_file_counts(tmp_path):
    path = write_llmc_shard(tmp_path / "cut.bin", np.arange(100))
    with open(path, "r+b") as handle:
        handle.truncate(1024 + 2 * 60)
    with pytest.raises(TokenFileError, match="truncated: header says 100 tokens, file holds 60") as err:
        load_tokens(path)
    assert str(path) in str(err.value)


def test_odd_length_flat_file_is_rejected(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(b"\x01\x00\x02")
    with pytest.raises(TokenFileError, match="odd byte length 3") as err:
        load_tokens(path)
    assert str(path) in str(err.value)


def test_empty_glob_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(TokenFileError, match=re.escape(f"no files match {tmp_path}/nothing_*.bin")):
        load_tokens(tmp_path / "nothing_*.bin")
    with pytest.raises(TokenFileError, match="missing.bin: file not found"):
        load_tokens(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(TokenFileError, match="empty.bin: empty file"):
        load_tokens(tmp_path / "empty.bin")


def test_too_short_file_fails_when_sampling(tmp_path):
    path = write_tokens_bin(tmp_path / "short.bin", np.arange(SEQ_LEN))
    with pytest.raises(TokenFileError, match=f"short.bin: too short: holds {SEQ_LEN} tokens.*needs {SEQ_LEN + 1}"):
        TokenSampler(path, SEQ_LEN, seed=0)
    with pytest.raises(TokenFileError, match="short.bin: too short"):
        validation_set(path, SEQ_LEN, n_sequences=1)


def test_writers_reject_tokens_outside_uint16(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 65535\] for uint16 files, got \[1, 65536\]"):
        write_tokens_bin(tmp_path / "big.bin", [1, 65536])
    with pytest.raises(ValueError, match="non-empty"):
        write_llmc_shard(tmp_path / "none.bin", [])


# --- sampling ---------------------------------------------------------------------------------------------------


def test_sequences_are_windows_of_the_tokens(positions):
    sampler = TokenSampler(positions, SEQ_LEN, seed=3)
    x, y = sampler.sequences(0, 3000)  # crosses two block boundaries
    assert x.dtype == torch.int64 and x.shape == (3000, SEQ_LEN)
    offsets = x[:, 0]
    assert int(offsets.min()) >= 0 and int(offsets.max()) <= len(positions) - SEQ_LEN - 1
    torch.testing.assert_close(x, offsets[:, None] + torch.arange(SEQ_LEN))
    torch.testing.assert_close(y, x + 1)


def test_same_seed_same_sequences_different_seed_different(positions):
    x_a, _ = TokenSampler(positions, SEQ_LEN, seed=1).sequences(0, 64)
    x_b, _ = TokenSampler(positions, SEQ_LEN, seed=1).sequences(0, 64)
    x_c, _ = TokenSampler(positions, SEQ_LEN, seed=2).sequences(0, 64)
    assert torch.equal(x_a, x_b) and not torch.equal(x_a, x_c)


def test_any_sequence_index_is_reached_directly(positions):
    full, _ = TokenSampler(positions, SEQ_LEN, seed=0).sequences(0, 2100)
    jumped, _ = TokenSampler(positions, SEQ_LEN, seed=0).sequences(2000, 100)  # fresh sampler, no history
    assert torch.equal(jumped, full[2000:])


def _collect(batches: StepBatches) -> list[dict]:
    return list(batches)


def _schedule(step: int, tokens_seen: int) -> int:
    """A batch ramp by tokens (8 → 16 → 32 sequences), as a batch-size warmup would give."""
    return 8 if tokens_seen < 40 * SEQ_LEN else 16 if tokens_seen < 100 * SEQ_LEN else 32


@pytest.mark.parametrize("schedule", [16, _schedule])
def test_resuming_after_k_steps_yields_step_k_plus_one(positions, schedule):
    sampler = TokenSampler(positions, SEQ_LEN, seed=5)
    full = _collect(StepBatches(sampler, schedule, micro_batch=4, max_steps=10))
    assert [b["step"] for b in full] == list(range(10))
    for k in (1, 4, 7):
        consumed = full[k - 1]["sequences_before"] + full[k - 1]["sequences"]
        fresh = TokenSampler(positions, SEQ_LEN, seed=5)
        resumed = _collect(StepBatches(fresh, schedule, micro_batch=4, start_step=k, start_sequence=consumed,
                                       max_steps=10))
        assert [b["step"] for b in resumed] == list(range(k, 10))
        for got, want in zip(resumed, full[k:]):
            assert torch.equal(got["x"], want["x"]) and torch.equal(got["y"], want["y"])
            assert got["tokens_before"] == want["tokens_before"]


def test_step_batches_follow_the_schedule_and_token_budget(positions):
    sampler = TokenSampler(positions, SEQ_LEN, seed=0)
    batches = _collect(StepBatches(sampler, _schedule, micro_batch=4, max_tokens=200 * SEQ_LEN))
    assert [b["sequences"] for b in batches] == [8] * 5 + [16] * 4 + [32] * 3
    assert [b["x"].shape[0] for b in batches] == [2] * 5 + [4] * 4 + [8] * 3  # accumulation count A
    assert batches[-1]["tokens_before"] < 200 * SEQ_LEN <= batches[-1]["tokens_before"] + 32 * SEQ_LEN
    # Step k uses the consecutive sequence indices after those of steps < k.
    x, _ = sampler.sequences(0, sum(b["sequences"] for b in batches))
    torch.testing.assert_close(torch.cat([b["x"].reshape(-1, SEQ_LEN) for b in batches]), x)


def test_ranks_take_disjoint_shares_that_form_the_full_batch(positions):
    single = _collect(StepBatches(TokenSampler(positions, SEQ_LEN, 9), _schedule, micro_batch=2, max_steps=8))
    shares = [
        _collect(StepBatches(TokenSampler(positions, SEQ_LEN, 9), _schedule, 2, max_steps=8, rank=r, world_size=4))
        for r in range(4)
    ]
    for step, whole in enumerate(single):
        parts = [shares[r][step]["x"] for r in range(4)]
        assert all(p.shape == (whole["x"].shape[0] // 4, 2, SEQ_LEN) for p in parts)
        assert torch.equal(torch.cat(parts), whole["x"])


def test_ranks_get_disjoint_sequence_indices(positions):
    """Shares are disjoint as sequence indices (offsets may repeat: sampling is with replacement)."""
    sampler = TokenSampler(positions, SEQ_LEN, 0)
    batches = [_collect(StepBatches(sampler, 16, 4, max_steps=3, rank=r, world_size=2)) for r in range(2)]
    for step in range(3):
        x0, x1 = batches[0][step]["x"], batches[1][step]["x"]
        first = step * 16
        assert torch.equal(x0.reshape(-1, SEQ_LEN), sampler.sequences(first, 8)[0])
        assert torch.equal(x1.reshape(-1, SEQ_LEN), sampler.sequences(first + 8, 8)[0])


def test_batch_not_divisible_by_micro_batch_and_world_size_is_named(positions):
    sampler = TokenSampler(positions, SEQ_LEN, 0)
    with pytest.raises(ValueError, match="gave 12 sequences at step 0.*micro_batch × world_size = 4 × 2 = 8"):
        next(iter(StepBatches(sampler, 12, micro_batch=4, world_size=2, max_steps=1)))
    with pytest.raises(ValueError, match="gave 0 sequences at step 2"):
        list(StepBatches(sampler, lambda step, seen: 0 if step == 2 else 4, micro_batch=4, max_steps=5))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_loader_preserves_the_step_order(positions, num_workers):
    dataset = StepBatches(TokenSampler(positions, SEQ_LEN, 4), _schedule, micro_batch=4, max_steps=9)
    direct = _collect(dataset)
    loaded = list(DataLoader(dataset, batch_size=None, num_workers=num_workers))
    assert [b["step"] for b in loaded] == list(range(9))
    assert all(torch.equal(a["x"], b["x"]) and a["tokens_before"] == b["tokens_before"] for a, b in zip(loaded, direct))


# --- validation and bits per byte -------------------------------------------------------------------------------


def test_validation_set_is_fixed_and_evenly_spaced(tmp_path, positions):
    path = write_tokens_bin(tmp_path / "val.bin", positions[:1000])
    x, y = validation_set(path, SEQ_LEN, n_sequences=5)
    x_again, _ = validation_set(load_tokens(path), SEQ_LEN, n_sequences=5)
    assert torch.equal(x, x_again) and torch.equal(y, x + 1)
    last = 1000 - SEQ_LEN - 1  # the last offset with a target for every input
    assert x[:, 0].tolist() == [0, last // 4, last // 2, 3 * last // 4, last]
    with pytest.raises(TokenFileError, match="n_sequences=993 must lie in \\[1, 992\\]"):
        validation_set(path, SEQ_LEN, n_sequences=993)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(2.0, bytes_per_token=4.0) == pytest.approx(2.0 / math.log(2) / 4.0)
    torch.testing.assert_close(bits_per_byte(torch.tensor([math.log(2), 0.0])), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="bytes_per_token=0"):
        bits_per_byte(1.0, bytes_per_token=0)


def test_a_lost_dataset_insert_race_is_retried_and_other_refusals_are_not():
    """Workers starting together insert the same dataset row: the loser's unique-key error (a 400 from MLflow's SQL
    store, the IntegrityError as its cause) is worth another try; any other refusal is not."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from lab.lineage import _lost_insert_race

    try:
        try:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO datasets", {}, Exception("UNIQUE constraint failed"))
        except sqlalchemy.exc.IntegrityError as inner:
            raise MlflowException(message=inner, error_code="BAD_REQUEST") from inner
    except MlflowException as err:
        assert _lost_insert_race(err)
    assert _lost_insert_race(MlflowException("duplicate key value violates unique constraint \"datasets_pk\""))
    assert not _lost_insert_race(MlflowException("RESOURCE_DOES_NOT_EXIST: run abc not found"))
