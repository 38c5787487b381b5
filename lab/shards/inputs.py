"""Where ``lab-data`` reads documents from, in one deterministic order.

An ``--input`` is a file, a glob (its matches sorted by path), or ``hf:NAME`` (a Hugging Face dataset through
``datasets``, streamed; NAME may be a hub name or a local dataset directory). A file's kind follows its suffix:

- ``.jsonl`` / ``.ndjson``: one JSON object per line, the document is its ``--text-column`` field;
- ``.parquet``: the ``--text-column`` column;
- anything else: a text file, the whole file one document (UTF-8; undecodable bytes become U+FFFD), or with
  ``--text-split paragraph`` one document per blank-line-separated paragraph (for a few long files, whose
  train/validation split would otherwise be too coarse).

Every source is checked before anything is written (it exists, its column exists); each gets a digest for the
manifest: the sha256 of a file's bytes, of a local dataset directory's files, or of a hub dataset's name,
configuration, split and revision.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lab.shards.errors import PrepareError

HF_PREFIX = "hf:"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Source:
    kind: str
    """text | jsonl | parquet | hf."""
    location: str
    """File path, or the dataset name / directory for hf."""
    column: Optional[str] = None
    split: str = "train"
    config: Optional[str] = None
    revision: Optional[str] = None
    paragraphs: bool = False
    """Text files only: one document per blank-line-separated paragraph instead of one per file."""


TEXT_SPLITS = ("file", "paragraph")


def resolve_inputs(specs: Sequence[str], column: str = "text", *, hf_split: str = "train",
                   hf_config: Optional[str] = None, hf_revision: Optional[str] = None,
                   text_split: str = "file") -> list[Source]:
    """Expand ``--input`` specs into sources, checking each exists; fail naming the spec that matches nothing."""
    if not specs:
        raise PrepareError("no --input given", "pass --input 'docs/*.txt' (files, globs, JSONL, Parquet or hf:NAME)")
    sources: list[Source] = []
    for spec in specs:
        if spec.startswith(HF_PREFIX):
            sources.append(Source("hf", spec[len(HF_PREFIX):], column, hf_split, hf_config, hf_revision))
            continue
        text = os.path.expanduser(spec)
        paths = sorted(p for p in glob.glob(text) if Path(p).is_file()) if any(c in text for c in "*?[") else [text]
        if not paths:
            raise PrepareError(f"--input {spec!r} matches no files", "check the pattern and the working directory")
        for path in paths:
            if Path(path).is_dir():
                raise PrepareError(f"--input {spec!r} is a directory",
                                   f"pass its files ('{path}/*.txt'), or hf:{path} for a datasets directory")
            if not Path(path).is_file():
                raise PrepareError(f"--input {path}: file not found", "check the path")
            suffix = Path(path).suffix.lower()
            kind = "jsonl" if suffix in JSONL_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "text"
            sources.append(Source(kind, str(Path(path)), column if kind != "text" else None,
                                  paragraphs=kind == "text" and text_split == "paragraph"))
    for source in sources:
        check_source(source)
    return sources


def check_source(source: Source) -> None:
    """Fail now, naming the file and the column, when a source cannot give documents."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(source.location).schema_arrow.names
        except Exception as err:  # pyarrow raises ArrowInvalid and OSError for a file that is not Parquet
            raise PrepareError(f"{source.location}: not a readable Parquet file ({err})", "check the file") from err
        _check_column(source, names)
    elif source.kind == "jsonl":
        for first in _jsonl_rows(source):
            _check_column(source, list(first))
            break
    elif source.kind == "hf":
        for first in _hf_rows(source):
            _check_column(source, list(first))
            break


def _check_column(source: Source, names: list[str]) -> None:
    if source.column not in names:
        raise PrepareError(f"{source.location}: no column {source.column!r} (it has {', '.join(map(str, names)) or 'none'})",
                           "name the text column with --text-column")


def _jsonl_rows(source: Source) -> Iterator[dict]:
    with open(source.location, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrepareError(f"{source.location}:{number}: not a JSON object ({err})",
                                   "fix or drop that line (JSONL holds one object per line)") from err
            if not isinstance(row, dict):
                raise PrepareError(f"{source.location}:{number}: a JSON {type(row).__name__}, not an object",
                                   "write one object per line, e.g. {\"text\": \"...\"}")
            yield row


def _hf_rows(source: Source) -> Iterator[dict]:
    try:
        import datasets
    except ImportError as err:
        raise PrepareError(f"--input hf:{source.location} needs the datasets package, which is not installed",
                           "pip install 'scaling-lab[data]' (or datasets), or export the data to JSONL/Parquet") from err
    try:
        dataset = datasets.load_dataset(source.location, source.config, split=source.split, streaming=True,
                                        revision=source.revision)
    except Exception as err:  # datasets raises many kinds (not found, no network, bad config): name them all here
        raise PrepareError(f"could not open dataset {source.location!r} split {source.split!r} ({type(err).__name__}: {err})",
                           "check the name, --hf-split / --hf-config and the network; a local directory works offline") from err
    yield from dataset


def iter_documents(source: Source) -> Iterator[str]:
    """The source's documents, in order (empty ones included: the caller skips them)."""
    if source.kind == "text":
        with open(source.location, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
        if source.paragraphs:
            yield from (paragraph for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip())
        else:
            yield text
    elif source.kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(source.location).iter_batches(columns=[source.column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield _text(source, value)
    else:
        rows = _jsonl_rows(source) if source.kind == "jsonl" else _hf_rows(source)
        for row in rows:
            if source.column not in row:
                raise PrepareError(f"{source.location}: a row has no column {source.column!r} (it has {', '.join(row)})",
                                   "give every row the text column, or name another with --text-column")
            yield _text(source, row[source.column])


def _text(source: Source, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PrepareError(f"{source.location}: column {source.column!r} holds {type(value).__name__}, not text",
                           "name a string column with --text-column")
    return value


def source_digest(source: Source) -> str:
    """sha256 of what the source reads: a file's bytes, a local dataset's files, or a hub dataset's identity."""
    digest = hashlib.sha256()
    if source.kind != "hf":
        _hash_file(digest, Path(source.location))
    elif Path(source.location).is_dir():
        root = Path(source.location)
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
            _hash_file(digest, path)
        digest.update(json.dumps([source.column, source.split, source.config]).encode("utf-8"))
    else:
        digest.update(json.dumps([source.location, source.column, source.split, source.config,
                                  source.revision]).encode("utf-8"))
    return digest.hexdigest()


def _hash_file(digest: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def describe(source: Source) -> dict[str, object]:
    """The manifest's entry for a source."""
    entry: dict[str, object] = {"kind": source.kind, "location": source.location, "sha256": source_digest(source)}
    if source.column is not None:
        entry["column"] = source.column
    if source.paragraphs:
        entry["documents"] = "paragraphs"
    if source.kind == "hf":
        entry.update(split=source.split, config=source.config, revision=source.revision)
    return entry
