"""Token files: flat nanoGPT ``.bin`` files and llm.c / modded-nanogpt shards, one file or a glob of them.

Formats (all little-endian):

- flat ``.bin`` (nanoGPT ``data/*/prepare.py``): the file is nothing but uint16 tokens, so its byte length is even.
- llm.c shard (llm.c ``dev/data/data_common.py::write_datafile``; modded-nanogpt's ``fineweb_*.bin``): a header
  of 256 int32 words -- [0] magic, [1] version, [2] token count N -- then N tokens. The (magic, version) pair says
  the token width, as llm.c defines it: (20240520, 1) GPT-2 style, uint16 tokens, 1024 + 2·N bytes; (20240801, 7)
  Llama 3 style, uint32 tokens, 1024 + 4·N bytes. :func:`write_llmc_shard` picks uint16 for vocabularies up to
  65,536 ids (0..65,535) and uint32 above.

A file is read as a shard iff its first int32 word is one of the magics. This cannot misread a flat file of GPT-2
or byte-level tokens: read as uint16 the magics are the token pairs (55432, 308) and (55489, 308), and 55432 and
55489 lie outside both vocabularies (50257 and 256).

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
"""First header word of an llm.c GPT-2-style shard, uint16 tokens (llm.c ``dev/data/data_common.py``)."""
LLMC_VERSION = 1
"""Version of the uint16 shard."""
LLMC_LLAMA3_MAGIC = 20240801
"""First header word of llm.c's Llama 3-style shard, uint32 tokens."""
LLMC_LLAMA3_VERSION = 7
"""Version of the uint32 shard (llm.c ``data_common.py``: ``"llama-3": {"magic": 20240801, "version": 7}``)."""
LLMC_HEADER_WORDS = 256
LLMC_HEADER_BYTES = 4 * LLMC_HEADER_WORDS
TOKEN_DTYPE = np.dtype("<u2")
TOKEN_DTYPE_32 = np.dtype("<u4")
SHARD_FORMATS = {LLMC_MAGIC: (LLMC_VERSION, TOKEN_DTYPE), LLMC_LLAMA3_MAGIC: (LLMC_LLAMA3_VERSION, TOKEN_DTYPE_32)}
"""magic -> (version, token dtype) of each llm.c shard format read and written here."""
UINT16_VOCAB = 2**16
"""Largest vocabulary whose ids (0..65,535) fit uint16 tokens."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest token dtype that holds every id of a vocabulary: uint16 up to 65,536 ids, else uint32."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size={vocab_size} must lie in [1, 2**32] to be stored as uint16 or uint32 tokens")
    return TOKEN_DTYPE if vocab_size <= UINT16_VOCAB else TOKEN_DTYPE_32


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
        if len(tokens.paths) > 1:
            return f"{tokens.paths[0]} (+{len(tokens.paths) - 1} more files)"
        return str(tokens.paths[0])
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

    Returns a read-only uint16 or uint32 ``np.memmap`` for a single file and a :class:`TokenStream` for several; both
    support ``len()`` and slicing. Raises :class:`TokenFileError` for empty globs, missing files, bad headers,
    truncated shards and odd-length flat files.
    """
    paths = resolve_paths(spec)
    return load_token_files(paths)


def load_token_files(paths: Sequence[str | Path]) -> Tokens:
    """Open the given token files (in this order) as one sequence; see :func:`load_tokens`."""
    if not paths:
        raise ValueError("load_token_files needs at least one path")
    parts = [open_token_file(path) for path in paths]
    return parts[0] if len(parts) == 1 else TokenStream(parts, [Path(p) for p in paths])


def open_token_file(path: str | Path) -> np.ndarray:
    """Memory-map one token file, detecting its format from the first header word."""
    path = Path(path)
    n_bytes = path.stat().st_size
    if n_bytes == 0:
        raise TokenFileError(path, "empty file (0 bytes)", "re-create it, or remove it from the glob")
    header = np.fromfile(path, dtype="<i4", count=min(LLMC_HEADER_WORDS, n_bytes // 4))
    if header.size and int(header[0]) in SHARD_FORMATS:
        return _open_llmc_shard(path, header, n_bytes)
    if _looks_like_shard_header(header, n_bytes):
        magics = " or ".join(str(m) for m in SHARD_FORMATS)
        problem = f"wrong magic: header word 0 is {int(header[0])}, an llm.c shard needs {magics}"
        fix = "re-export the tokens with lab.data.write_llmc_shard or write_tokens_bin"
        raise TokenFileError(
            path, problem + "; its header token count matches the file size, so it is not flat tokens", fix)
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
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    expected_version, dtype = SHARD_FORMATS[magic]
    if version != expected_version:
        known = ", ".join(f"magic {m} version {v} ({d.itemsize * 8}-bit tokens)"
                          for m, (v, d) in SHARD_FORMATS.items())
        raise TokenFileError(
            path,
            f"unsupported llm.c shard version {version} for magic {magic} (read here: {known})",
            "re-export the tokens with lab.data.write_llmc_shard",
        )
    width = dtype.itemsize
    held_bytes = n_bytes - LLMC_HEADER_BYTES
    if held_bytes != width * count:
        state = "truncated" if held_bytes < width * count else "longer than its header"
        stray = held_bytes % width
        raise TokenFileError(
            path,
            f"{state}: header says {count} tokens, file holds {held_bytes // width}"
            + (f" and {stray} stray byte{'s' if stray > 1 else ''}" if stray else "") + f" ({8 * width}-bit tokens)",
            "re-create or re-download the shard",
        )
    if count == 0:
        raise TokenFileError(path, "shard holds 0 tokens", "remove it from the glob")
    return np.memmap(path, dtype=dtype, mode="r", offset=LLMC_HEADER_BYTES, shape=(count,))


def write_tokens_bin(path: str | Path, tokens: Iterable[int] | np.ndarray) -> Path:
    """Write tokens as a flat nanoGPT uint16 ``.bin`` file, atomically; returns the path."""
    array = _as_uint16(tokens, path)
    return atomic_write(path, [array.tobytes()])


def write_llmc_shard(path: str | Path, tokens: Iterable[int] | np.ndarray, vocab_size: int | None = None) -> Path:
    """Write tokens as an llm.c shard (256 × int32 header, then the tokens), atomically.

    The width follows ``vocab_size`` (:func:`token_dtype`: uint16 up to 65,536 ids, uint32 above), so every shard of
    one dataset has the same format; without it, the largest id decides. Ids must lie below ``vocab_size``.
    """
    array = _as_token_array(tokens, path)
    high = int(array.max())
    if vocab_size is not None and high >= vocab_size:
        raise ValueError(f"{path}: token id {high} does not fit vocab_size={vocab_size} (ids are 0..{vocab_size - 1})")
    dtype = token_dtype(vocab_size if vocab_size is not None else high + 1)
    if array.size >= 2**31:
        raise ValueError(f"{path}: {array.size} tokens exceed the int32 header count; split them into shards")
    magic = LLMC_MAGIC if dtype == TOKEN_DTYPE else LLMC_LLAMA3_MAGIC
    header = np.zeros(LLMC_HEADER_WORDS, dtype="<i4")
    header[:3] = (magic, SHARD_FORMATS[magic][0], array.size)
    return atomic_write(path, [header.tobytes(), array.astype(dtype, copy=False).tobytes()])


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


def _as_token_array(tokens: Iterable[int] | np.ndarray, path: str | Path) -> np.ndarray:
    array = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{path}: tokens must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= 2**32:
        raise ValueError(f"{path}: token ids must lie in [0, 2**32 - 1], got [{low}, {high}]")
    return array


def _as_uint16(tokens: Iterable[int] | np.ndarray, path: str | Path) -> np.ndarray:
    array = _as_token_array(tokens, path)
    low, high = int(array.min()), int(array.max())
    if high > 65535:
        raise ValueError(f"{path}: token ids must lie in [0, 65535] for uint16 files, got [{low}, {high}]; "
                         "write an llm.c shard instead (write_llmc_shard stores them as uint32)")
    return array.astype(TOKEN_DTYPE, copy=False)
