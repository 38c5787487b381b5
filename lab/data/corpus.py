"""The built-in corpus: the Python standard library's source on this machine, as byte-level tokens.

Recipe (change ``_RECIPE_VERSION`` whenever it changes, so stale caches are not reused):

- every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, walked in sorted order of its relative POSIX path;
- skipping the directories in :data:`SKIP_DIRS`: third-party packages (``site-packages``, ``dist-packages``) are
  not the standard library, and the test suites (``test``, ``tests``, ``idle_test``) are left out because they are
  ~60% of the bytes (CPython 3.11: 19 MB of 31 MB) and dominated by fixtures and generated data tables, while the
  ~12 MB of library code is ample for the small models trained here;
- tokens are the file's bytes (vocab 256, 1 byte per token), each file followed by one :data:`DOC_SEPARATOR`
  byte 0 (NUL does not occur in the standard library's source: 0 occurrences in CPython 3.11's);
- a file belongs to the validation split iff the first 8 bytes of sha256(relative path), read as a fraction of
  2^64, fall below ``val_fraction`` -- stable across processes and machines, unlike ``hash()``;
- ``max_bytes`` caps the source bytes read: the validation split gets round(val_fraction · max_bytes) of them
  (at least 1) and training the rest, so both splits stay non-empty under a small cap; within a split, files are
  taken in the order of bytes 8..16 of the same digest (a deterministic shuffle independent of the split), and
  the file that crosses the split's budget is cut to fit.

The two splits are cached as flat uint16 ``.bin`` files named by a fingerprint of the recipe, the Python build,
the parameters and every source file's (path, size, mtime), written atomically so parallel workers can share
the cache directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.data.tokens import TOKEN_DTYPE, atomic_write

VOCAB_SIZE = 256
"""Byte-level tokens: one token per byte value."""
BYTES_PER_TOKEN = 1.0
"""Source bytes per token of the built-in corpus, for bits per byte."""
DOC_SEPARATOR = 0
"""Token appended after every source file (the NUL byte, absent from the standard library's source)."""
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
"""Directory names not descended into (see the module docstring for why)."""
_RECIPE_VERSION = 1


@dataclass(frozen=True)
class CorpusFiles:
    """The cached token files of a corpus split, with what a trainer needs to interpret them."""

    train: Path
    val: Path
    vocab_size: int = VOCAB_SIZE
    bytes_per_token: float = BYTES_PER_TOKEN


@dataclass(frozen=True)
class SourceFile:
    """One source file of the corpus: its relative POSIX path, size in bytes and mtime in ns."""

    relpath: str
    size: int
    mtime_ns: int


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_sources(root: str | Path) -> list[SourceFile]:
    """Every ``*.py`` file under ``root`` outside :data:`SKIP_DIRS`, sorted by relative path."""
    root = Path(root)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py"):
                full = Path(directory) / name
                stat = full.stat()
                found.append(SourceFile(full.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda source: source.relpath)


def _digest(relpath: str) -> bytes:
    return hashlib.sha256(relpath.encode("utf-8")).digest()


def is_validation(relpath: str, val_fraction: float) -> bool:
    """Whether the file at ``relpath`` (relative POSIX path) belongs to the validation split."""
    return int.from_bytes(_digest(relpath)[:8], "big") < val_fraction * 2**64


def select_sources(sources: list[SourceFile], val_fraction: float, max_bytes: int | None) -> dict[str, int]:
    """Map each chosen file's relpath to how many of its leading bytes to keep, within ``max_bytes`` in total."""
    if max_bytes is None:
        return {source.relpath: source.size for source in sources}
    val_budget = max(1, round(val_fraction * max_bytes))
    budgets = {True: val_budget, False: max_bytes - val_budget}  # bytes, keyed by is_validation
    chosen: dict[str, int] = {}
    for source in sorted(sources, key=lambda s: _digest(s.relpath)[8:16]):
        is_val = is_validation(source.relpath, val_fraction)
        if budgets[is_val] > 0:
            chosen[source.relpath] = min(source.size, budgets[is_val])
            budgets[is_val] -= chosen[source.relpath]
    return chosen


def builtin_corpus(
    cache_dir: str | Path,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
    *,
    root: str | Path | None = None,
) -> CorpusFiles:
    """Build (or reuse from ``cache_dir``) the byte-level corpus of the standard library's source.

    ``root`` replaces the standard library by another tree of ``*.py`` files (tests use a small one).
    Takes about a second for the whole standard library; a cache hit costs one directory walk (~20 ms).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must lie in (0, 1) so both splits get files; e.g. 0.05")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes} must be a positive number of bytes, or None for the whole corpus")
    root = Path(root) if root is not None else stdlib_root()
    sources = list_sources(root)
    if not sources:
        raise ValueError(f"{root}: no *.py files found outside {sorted(SKIP_DIRS)}; pass a directory of Python source")

    fingerprint = _fingerprint(root, sources, val_fraction, max_bytes)
    stem = f"pysrc-py{sys.version_info.major}.{sys.version_info.minor}-{fingerprint}"
    files = CorpusFiles(train=Path(cache_dir) / f"{stem}-train.bin", val=Path(cache_dir) / f"{stem}-val.bin")
    if files.train.is_file() and files.val.is_file():
        return files

    documents: dict[bool, list[bytes]] = {False: [], True: []}
    separator = bytes([DOC_SEPARATOR])
    for relpath, keep in sorted(select_sources(sources, val_fraction, max_bytes).items()):
        with open(root / relpath, "rb") as handle:
            documents[is_validation(relpath, val_fraction)].append(handle.read(keep) + separator)
    for is_val, path in ((False, files.train), (True, files.val)):
        if not documents[is_val]:
            split = "validation" if is_val else "training"
            raise ValueError(
                f"{root}: the {split} split got no files (val_fraction={val_fraction}, max_bytes={max_bytes}); "
                "raise max_bytes or move val_fraction away from 0 and 1"
            )
        data = np.frombuffer(b"".join(documents[is_val]), dtype=np.uint8).astype(TOKEN_DTYPE)
        atomic_write(path, [data.tobytes()])
    return files


def _fingerprint(root: Path, sources: list[SourceFile], val_fraction: float, max_bytes: int | None) -> str:
    recipe = [_RECIPE_VERSION, sys.version, str(root.resolve()), val_fraction, max_bytes]
    listing = [(s.relpath, s.size, s.mtime_ns) for s in sources]
    return hashlib.sha256(json.dumps([recipe, listing]).encode("utf-8")).hexdigest()[:16]


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float = BYTES_PER_TOKEN) -> float:
    """Bits per byte from a loss L in nats per token: bpb = L / ln 2 / bytes_per_token.

    Gao et al. 2020 (The Pile), bits per UTF-8 byte: BPB = (L_T / L_B) · L / ln 2, where L_T / L_B (tokens per
    byte) = 1 / bytes_per_token. Byte-level tokens have bytes_per_token = 1. Works elementwise on arrays and tensors
    too.
    """
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token={bytes_per_token} must be > 0 (1.0 for byte-level tokens)")
    return loss_nats_per_token / math.log(2) / bytes_per_token
