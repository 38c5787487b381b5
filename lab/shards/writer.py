"""Documents → token shards: the split, the shard cuts, resuming, and the parallel encoder.

Documents (the non-empty ones) are numbered 0, 1, 2, ... in input order. Each goes to the validation split iff the
first 8 bytes of sha256(its UTF-8 text), read as a fraction of 2^64, fall below ``val_fraction`` (stable across
machines and runs; duplicates land in one split); if no document does, the one with the lowest hash goes there, so a
small input still gets both splits. Its tokens are the end-of-text id followed by its text's ids (llm.c's
``fineweb.py`` convention), and each split is the concatenation of its documents' tokens, cut into shards of exactly
``shard_tokens`` tokens (the last one shorter): ``{split}_{index:06d}.bin``, llm.c layout.

Resume: after each shard the state file records, per split, the shards written and where the next shard starts
(document number and token offset within it). A killed run re-reads the inputs from the earliest such document,
encodes only the documents a split still needs, and skips what its shards already hold, so its shards are
byte-identical to an uninterrupted run's. Shards, the trained tokenizer and the state are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lab.shards.inputs import Source, iter_documents
from lab.shards.tokenizers import Encoder, TokenizerSpec, load_encoder

SPLITS = ("train", "val")
STATE_FILE = ".lab-data-state.json"
KILL_AFTER_SHARDS_ENV = "LAB_DATA_KILL_AFTER_SHARDS"
"""Tests only: SIGKILL this process right after it has written this many shards (a real kill at a known point)."""


def _hash_fraction(text_bytes: bytes) -> int:
    return int.from_bytes(hashlib.sha256(text_bytes).digest()[:8], "big")


def forced_validation_doc(sources: Sequence[Source], val_fraction: float) -> Optional[int]:
    """The document that goes to validation because no document's hash falls below ``val_fraction``, else None.

    Stops at the first document that does fall below (after about 1/val_fraction documents), so it costs a full
    read only of an input so small that its validation split would otherwise be empty.
    """
    lowest, lowest_doc = 2**64, None
    for doc, text in enumerate(text for source in sources for text in iter_documents(source) if text):
        value = _hash_fraction(text.encode("utf-8"))
        if value < val_fraction * 2**64:
            return None
        if value < lowest:
            lowest, lowest_doc = value, doc
    return lowest_doc


def split_documents(sources: Sequence[Source], val_fraction: float, forced_val: Optional[int],
                    start_doc: int = 0) -> Iterator[tuple[int, str, str, bytes]]:
    """(document number, split, text, UTF-8 bytes) of every non-empty document from ``start_doc`` on."""
    doc = -1
    for source in sources:
        for text in iter_documents(source):
            if not text:
                continue
            doc += 1
            if doc < start_doc:
                continue
            raw = text.encode("utf-8")
            is_val = doc == forced_val or _hash_fraction(raw) < val_fraction * 2**64
            yield doc, "val" if is_val else "train", text, raw


@dataclass
class SplitState:
    """One split's progress: shards written, and where the next shard's first token comes from."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    next_doc: int = 0
    next_offset: int = 0
    documents: int = 0
    """Documents whose first token lies in a written shard."""
    bytes: int = 0


@dataclass
class _Piece:
    doc: int
    offset: int
    """Index of this piece's first token within its document's tokens."""
    tokens: np.ndarray
    n_bytes: int
    """The document's UTF-8 bytes when this piece starts the document, else 0 (already counted)."""


class SplitWriter:
    """Buffers one split's tokens and writes a shard whenever ``shard_tokens`` are buffered."""

    def __init__(self, split: str, out: Path, shard_tokens: int, vocab_size: int, state: SplitState) -> None:
        self.split, self.out, self.shard_tokens, self.vocab_size, self.state = split, out, shard_tokens, vocab_size, state
        self.buffer: deque[_Piece] = deque()  # popped from the left once per document: O(1)
        self.buffered = 0

    def wants(self, doc: int) -> bool:
        return doc >= self.state.next_doc

    def add(self, doc: int, tokens: np.ndarray, n_bytes: int) -> int:
        """Buffer a document's tokens (less what written shards hold); returns how many shards this completed."""
        offset = self.state.next_offset if doc == self.state.next_doc else 0
        self.buffer.append(_Piece(doc, offset, tokens[offset:], n_bytes if offset == 0 else 0))
        self.buffered += len(tokens) - offset
        written = 0
        while self.buffered >= self.shard_tokens:
            self._write(self.shard_tokens)
            written += 1
        return written

    def finish(self) -> int:
        if self.buffered:
            self._write(self.buffered)
            return 1
        return 0

    def _write(self, count: int) -> None:
        from lab.data.tokens import write_llmc_shard

        parts, need = [], count
        while need:
            piece = self.buffer[0]
            take = min(need, len(piece.tokens))
            parts.append(piece.tokens[:take])
            if piece.n_bytes:
                self.state.documents += 1
                self.state.bytes += piece.n_bytes
            need -= take
            if take == len(piece.tokens):
                self.buffer.popleft()
            else:
                self.buffer[0] = _Piece(piece.doc, piece.offset + take, piece.tokens[take:], 0)
        self.buffered -= count
        name = f"{self.split}_{len(self.state.shards):06d}.bin"
        tokens = np.concatenate(parts)
        path = write_llmc_shard(self.out / name, tokens, vocab_size=self.vocab_size)
        self.state.shards.append({"file": name, "tokens": int(count),
                                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        if self.buffer:
            self.state.next_doc, self.state.next_offset = self.buffer[0].doc, self.buffer[0].offset
        else:  # the shard ended with a document: the next shard starts with the next one this split takes
            self.state.next_doc, self.state.next_offset = self._last_doc + 1, 0

    def note_doc(self, doc: int) -> None:
        self._last_doc = doc


# --- the worker side: one encoder per process ----------------------------------------------------------------------

_ENCODER: Optional[Encoder] = None


def _init_worker(spec: TokenizerSpec, trained: Optional[str]) -> None:
    global _ENCODER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    _ENCODER = load_encoder(spec, Path(trained) if trained else None)


def _encode(texts: list[str]) -> list[np.ndarray]:
    assert _ENCODER is not None
    return _ENCODER.encode_batch(texts)


@dataclass(frozen=True)
class _Batch:
    docs: list[int]
    splits: list[str]
    sizes: list[int]
    texts: list[str]


def batches(sources: Sequence[Source], start_doc: int, wanted, val_fraction: float, forced_val: Optional[int],
            batch_bytes: int) -> Iterator[_Batch]:
    """Documents from ``start_doc`` on that ``wanted(doc, split)`` keeps, in batches of about ``batch_bytes``."""
    batch = _Batch([], [], [], [])
    size = 0
    for doc, split, text, raw in split_documents(sources, val_fraction, forced_val, start_doc):
        if not wanted(doc, split):
            continue
        batch.docs.append(doc), batch.splits.append(split), batch.sizes.append(len(raw)), batch.texts.append(text)
        size += len(raw)
        if size >= batch_bytes:
            yield batch
            batch, size = _Batch([], [], [], []), 0
    if batch.docs:
        yield batch


def write_shards(sources: Sequence[Source], spec: TokenizerSpec, trained: Optional[Path], encoder: Encoder,
                 out: Path, states: dict[str, SplitState], *, val_fraction: float, forced_val: Optional[int],
                 shard_tokens: int, workers: int,
                 batch_bytes: int, save_state, progress: bool) -> None:
    """Encode and shard every document the splits still need; ``save_state()`` runs after each shard."""
    from tqdm import tqdm

    writers = {s: SplitWriter(s, out, shard_tokens, encoder.vocab_size, states[s]) for s in SPLITS}
    start = min(w.state.next_doc for w in writers.values())
    stream = batches(sources, start, lambda doc, split: writers[split].wants(doc), val_fraction, forced_val, batch_bytes)
    kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0"))
    written = sum(len(s.shards) for s in states.values())
    pool = None
    if workers > 1:
        # One thread per worker process (the processes are the parallelism): set for the children only.
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(spec, str(trained) if trained else None))
        finally:
            if before is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
    in_flight: deque = deque()  # (batch, its pending encoding): at most 2 per worker, so memory stays bounded

    def consume(batch: _Batch, ids: list[np.ndarray], bar) -> None:
        nonlocal written
        for doc, split, size, tokens in zip(batch.docs, batch.splits, batch.sizes, ids):
            writer = writers[split]
            writer.note_doc(doc)
            for _ in range(writer.add(doc, tokens, size)):
                written += 1
                save_state()
                if kill_after and written >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        bar.update(sum(len(t) for t in ids))

    try:
        with tqdm(unit="tok", unit_scale=True, desc="lab-data", disable=not progress, smoothing=0.1) as bar:
            for batch in stream:
                if pool is None:
                    consume(batch, encoder.encode_batch(batch.texts), bar)
                    continue
                in_flight.append((batch, pool.apply_async(_encode, (batch.texts,))))
                if len(in_flight) >= 2 * workers:
                    done, result = in_flight.popleft()
                    consume(done, result.get(), bar)
            while in_flight:
                done, result = in_flight.popleft()
                consume(done, result.get(), bar)
        for writer in writers.values():
            if writer.finish():
                save_state()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def state_to_json(fingerprint: str, states: dict[str, SplitState], extra: dict[str, Any]) -> bytes:
    doc = {"fingerprint": fingerprint, **extra, "splits": {s: vars(states[s]) for s in SPLITS}}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def states_from_json(doc: dict[str, Any]) -> dict[str, SplitState]:
    return {s: SplitState(**doc["splits"][s]) for s in SPLITS}
