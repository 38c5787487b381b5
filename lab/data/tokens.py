"""Token files: flat nanoGPT ``.bin`` files and llm.c / modded-nanogpt shards, one file or a glob of them.

Formats (both little-endian, tokens are uint16):

- flat ``.bin`` (nanoGPT ``data/*/prepare.py``): the file is nothing but tokens, so its byte length is even.
- llm.c shard (llm.c ``dev/data/data_common.py::write_datafile``; modded-nanogpt's ``fineweb_*.bin``): a header
  of 256 int32 words -- [0] magic 20240520, [1] version 1 (= uint16 tokens), [2] token count N -- then N tokens,
  so the file holds exactly 1024 + 2·N bytes.

A file is read as a shard iff its first int32 word is the magic. This cannot misread a flat file of GPT-2 or
byte-level tokens: read as uint16 the magic is the token pair (55432, 308), and 55432 lies outside both
vocabularies (50257 and 256).

Files are opened as read-only ``np.memmap``s, so a corpus larger than memory costs only the pages sampled.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

LLMC_MAGIC = 20240520
"""First header word of an llm.c GPT-2-style shard (llm.c ``dev/data/data_common.py``)."""
LLMC_VERSION = 1
"""Shard version whose tokens are uint16; the only one read here."""
LLMC_HEADER_WORDS = 256
LLMC_HEADER_BYTES = 4 * LLMC_HEADER_WORDS
LLMC_LLAMA3_MAGIC = 20240801
"""llm.c's uint32-token (Llama 3) shard magic: recognised only to explain why it is refused."""
TOKEN_DTYPE = np.dtype("<u2")


class TokenFileError(ValueError):
    """A token file (or glob) that cannot be read; the message names the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class TokenStream:
    """Several token files read as one sequence, in the given order, without copying them.

    Supports ``len()`` and contiguous slicing (``stream[a:b]``, possibly spanning file boundaries, which copies
    only the slice). Returned by :func:`load_tokens` when a glob matches more than one file.
    """

    def __init__(self, parts: Sequence[np.ndarray], paths: Sequence[Path]) -> None:
        if not parts or len(parts) != len(paths):
            raise ValueError(f"TokenStream needs one path per part, got {len(parts)} parts and {len(paths)} paths")
        self.parts = list(parts)
        self.paths = [Path(p) for p in paths]
        # starts[i] is the global index of part i's first token; starts[-1] is the total length.
        self._starts = np.cumsum([0] + [len(p) for p in self.parts], dtype=np.int64)

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"TokenStream({len(self.parts)} files, {len(self)} tokens, first={self.paths[0]})"

    def take(self, indices: np.ndarray) -> np.ndarray:
        """``tokens[indices]`` for an integer array of global indices (any shape), gathered part by part with
        vectorised indexing: one NumPy gather per file, never a Python loop per index."""
        flat = np.asarray(indices, dtype=np.int64).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token indices out of range for {len(self)} tokens")
        part = np.searchsorted(self._starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for i in np.unique(part).tolist():
            where = part == i
            out[where] = self.parts[i][flat[where] - self._starts[i]]
        return out.reshape(np.shape(indices))

    def __getitem__(self, key: int | slice) -> np.ndarray | np.integer:
        if isinstance(key, (int, np.integer)):
            index = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= index < len(self):
                raise IndexError(f"token index {key} out of range for {len(self)} tokens")
            part = int(np.searchsorted(self._starts, index, side="right")) - 1
            return self.parts[part][index - self._starts[part]]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenStream supports integer indices and contiguous slices (step 1) only")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        part = int(np.searchsorted(self._starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            end = min(stop, int(self._starts[part + 1]))
            offset = int(self._starts[part])
            pieces.append(self.parts[part][start - offset : end - offset])
            start, part = end, part + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


Tokens = np.ndarray | TokenStream
"""What :func:`load_tokens` returns: one memmap, or a :class:`TokenStream` over several."""


def describe_source(tokens: Tokens) -> str:
    """Name the file(s) behind ``tokens`` for error messages."""
    if isinstance(tokens, TokenStream):
        return f"{tokens.paths[0]} (+{len(tokens.paths) - 1} more files)" if len(tokens.paths) > 1 else str(tokens.paths[0])
    filename = getattr(tokens, "filename", None)
    return str(filename) if filename else "in-memory token array"


def resolve_paths(spec: str | Path) -> list[Path]:
    """Expand a file path or glob into the sorted list of files it names; fail if there are none."""
    text = os.path.expanduser(str(spec))
    if any(char in text for char in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not matches:
            raise TokenFileError(spec, f"no files match {text}", "check the pattern and the working directory")
        return matches
    path = Path(text)
    if path.is_dir():
        raise TokenFileError(path, "is a directory", f"pass a file or a glob such as {path / '*.bin'}")
    if not path.is_file():
        raise TokenFileError(path, "file not found", "check the path (relative paths start at the working directory)")
    return [path]


def load_tokens(spec: str | Path) -> Tokens:
    """Open a token file, or every file a glob matches (sorted by path, concatenated).

    Returns a read-only uint16 ``np.memmap`` for a single file and a :class:`TokenStream` for several; both
    support ``len()`` and slicing. Raises :class:`TokenFileError` for empty globs, missing files, bad headers,
    truncated shards and odd-length flat files.
    """
    paths = resolve_paths(spec)
    parts = [open_token_file(path) for path in paths]
    return parts[0] if len(parts) == 1 else TokenStream(parts, paths)


def open_token_file(path: str | Path) -> np.ndarray:
    """Memory-map one token file, detecting its format from the first header word."""
    path = Path(path)
    n_bytes = path.stat().st_size
    if n_bytes == 0:
        raise TokenFileError(path, "empty file (0 bytes)", "re-create it, or remove it from the glob")
    header = np.fromfile(path, dtype="<i4", count=min(LLMC_HEADER_WORDS, n_bytes // 4))
    if header.size and header[0] == LLMC_MAGIC:
        return _open_llmc_shard(path, header, n_bytes)
    if _looks_like_shard_header(header, n_bytes):
        problem = f"wrong magic: header word 0 is {int(header[0])}, an llm.c shard needs {LLMC_MAGIC}"
        if header[0] == LLMC_LLAMA3_MAGIC:
            problem += " (20240801 is llm.c's uint32-token Llama 3 format, which is not supported)"
        fix = "re-export the tokens as uint16 with lab.data.write_llmc_shard or write_tokens_bin"
        raise TokenFileError(path, problem + "; its header token count matches the file size, so it is not flat tokens", fix)
    if n_bytes % 2:
        raise TokenFileError(
            path,
            f"odd byte length {n_bytes} for a flat uint16 token file (2 bytes per token)",
            "the file is truncated or not uint16 tokens; re-export it with write_tokens_bin",
        )
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def _looks_like_shard_header(header: np.ndarray, n_bytes: int) -> bool:
    """A full header whose version is small and whose count matches the size at 2 or 4 bytes per token."""
    if header.size < LLMC_HEADER_WORDS:
        return False
    version, count = int(header[1]), int(header[2])
    payload = n_bytes - LLMC_HEADER_BYTES
    return 0 < version < 256 and count > 0 and payload in (2 * count, 4 * count)


def _open_llmc_shard(path: Path, header: np.ndarray, n_bytes: int) -> np.ndarray:
    if n_bytes < LLMC_HEADER_BYTES:
        raise TokenFileError(
            path,
            f"truncated: an llm.c shard header is {LLMC_HEADER_BYTES} bytes, the file holds {n_bytes}",
            "re-create the shard",
        )
    version, count = int(header[1]), int(header[2])
    if version != LLMC_VERSION:
        raise TokenFileError(
            path,
            f"unsupported llm.c shard version {version} (only version {LLMC_VERSION}, uint16 tokens, is read)",
            "re-export the tokens as uint16 with lab.data.write_llmc_shard",
        )
    held_bytes = n_bytes - LLMC_HEADER_BYTES
    if held_bytes != 2 * count:
        state = "truncated" if held_bytes < 2 * count else "longer than its header"
        raise TokenFileError(
            path,
            f"{state}: header says {count} tokens, file holds {held_bytes // 2}" + (" and a stray byte" if held_bytes % 2 else ""),
            "re-create or re-download the shard",
        )
    if count == 0:
        raise TokenFileError(path, "shard holds 0 tokens", "remove it from the glob")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=LLMC_HEADER_BYTES, shape=(count,))


def write_tokens_bin(path: str | Path, tokens: Iterable[int] | np.ndarray) -> Path:
    """Write tokens as a flat nanoGPT uint16 ``.bin`` file, atomically; returns the path."""
    array = _as_uint16(tokens, path)
    return atomic_write(path, [array.tobytes()])


def write_llmc_shard(path: str | Path, tokens: Iterable[int] | np.ndarray) -> Path:
    """Write tokens as an llm.c version-1 shard (256 × int32 header, then uint16 tokens), atomically."""
    array = _as_uint16(tokens, path)
    if array.size >= 2**31:
        raise ValueError(f"{path}: {array.size} tokens exceed the int32 header count; split them into shards")
    header = np.zeros(LLMC_HEADER_WORDS, dtype="<i4")
    header[:3] = (LLMC_MAGIC, LLMC_VERSION, array.size)
    return atomic_write(path, [header.tobytes(), array.tobytes()])


def atomic_write(path: str | Path, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    Readers (other workers sharing a cache) therefore see either no file or the complete file, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def _as_uint16(tokens: Iterable[int] | np.ndarray, path: str | Path) -> np.ndarray:
    array = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{path}: tokens must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{path}: token ids must lie in [0, 65535] for uint16 files, got [{low}, {high}]")
    return array.astype(TOKEN_DTYPE, copy=False)
