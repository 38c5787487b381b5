"""``lab-data prepare``: check everything, train the tokenizer if asked, write (or resume) the shards, then the manifest.

Every check that can reject the input (files, columns, tokenizer, an empty input, an output directory holding
something else) runs before the first byte is written, so bad input leaves nothing behind. A run of the same
inputs and settings into a directory holding an unfinished run resumes it; into a finished one it does nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lab.data.manifest import MANIFEST_NAME
from lab.data.tokens import atomic_write
from lab.shards.errors import PrepareError
from lab.shards.inputs import (
    TEXT_SPLITS,
    Source,
    describe,
    iter_documents,
    resolve_inputs,
)
from lab.shards.manifest import build_manifest, write_manifest
from lab.shards.tokenizers import (
    MIN_BPE_VOCAB,
    TOKENIZER_FILE,
    load_encoder,
    parse_spec,
    train_bpe,
)
from lab.shards.writer import (
    SPLITS,
    STATE_FILE,
    SplitState,
    forced_validation_doc,
    split_documents,
    state_to_json,
    states_from_json,
    write_shards,
)

FORMAT_VERSION = 1
"""Bump when the way documents become shards changes, so an old unfinished run is not resumed into a new layout."""


@dataclass(frozen=True)
class PrepareOptions:
    inputs: tuple[str, ...]
    tokenizer: str
    out: Path
    vocab_size: Optional[int] = None
    """bpe only: the vocabulary to train, end-of-text included."""
    text_column: str = "text"
    val_fraction: float = 0.01
    shard_tokens: int = 50_000_000
    """Tokens per shard (the last of a split holds the rest): 100 MB of uint16 tokens."""
    workers: int = 1
    eos: Optional[str] = None
    name: Optional[str] = None
    """The dataset's name in the manifest and in each run's lineage (default: the output directory's name)."""
    text_split: str = "file"
    hf_split: str = "train"
    hf_config: Optional[str] = None
    hf_revision: Optional[str] = None
    bpe_train_bytes: int = 1 << 30
    """bpe only: train on at most this many bytes of training-split text (the first documents)."""
    batch_bytes: int = 1 << 20
    """Text encoded per call of the batch encoder (and per task of a worker)."""
    progress: bool = True


def _check_options(o: PrepareOptions) -> None:
    if not 0 < o.val_fraction < 1:
        raise PrepareError(f"--val-fraction {o.val_fraction} must lie in (0, 1)", "use e.g. --val-fraction 0.01")
    if o.shard_tokens < 1 or o.workers < 1 or o.batch_bytes < 1:
        raise PrepareError(f"--shard-tokens {o.shard_tokens} and --workers {o.workers} must be >= 1", "use positive values")
    if o.text_split not in TEXT_SPLITS:
        raise PrepareError(f"--text-split {o.text_split!r} is unknown", f"use one of {', '.join(TEXT_SPLITS)}")
    if o.tokenizer == "bpe" and not o.vocab_size:
        raise PrepareError("--tokenizer bpe needs --vocab-size", "pass e.g. --vocab-size 4096")
    if o.tokenizer == "bpe" and o.vocab_size is not None and o.vocab_size < MIN_BPE_VOCAB:
        raise PrepareError(f"--vocab-size {o.vocab_size} is too small for a byte-level BPE (256 bytes + end-of-text)",
                           f"use at least {MIN_BPE_VOCAB}, e.g. --vocab-size 4096")
    if o.tokenizer != "bpe" and o.vocab_size is not None:
        raise PrepareError(f"--vocab-size applies to --tokenizer bpe only (the {o.tokenizer} vocabulary is fixed)",
                           "drop --vocab-size, or use --tokenizer bpe")


def _check_documents(sources: list[Source]) -> None:
    """Two non-empty documents at least (one per split); reads no further than the second."""
    found = 0
    for source in sources:
        for text in iter_documents(source):
            found += bool(text.strip())
            if found == 2:
                return
    shown = ", ".join(s.location for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
    if found == 0:
        raise PrepareError(f"the input holds no text ({shown})", "check the files and --text-column")
    raise PrepareError(f"the input holds one document ({shown}): training and validation need one each at least",
                       "give more documents, or --text-split paragraph to cut a text file at its blank lines")


def _training_texts(sources: list[Source], val_fraction: float, forced_val: Optional[int], limit: int):
    seen = 0
    for _, split, text, raw in split_documents(sources, val_fraction, forced_val):
        if split == "train":
            yield text
            seen += len(raw)
            if seen >= limit:
                return


def _check_written(out: Path, states: dict[str, SplitState]) -> None:
    """The shards an unfinished run recorded are still there, whole (sizes match their token counts)."""
    from lab.data.tokens import LLMC_HEADER_BYTES

    for state in states.values():
        for shard in state.shards:
            path = out / shard["file"]
            if not path.is_file() or (path.stat().st_size - LLMC_HEADER_BYTES) % shard["tokens"]:
                raise PrepareError(f"{path}, a shard the unfinished run recorded, is missing or damaged",
                                   "delete the directory and prepare again")


def prepare(o: PrepareOptions) -> Path:
    """Write shards and the manifest under ``o.out``; returns the manifest's path."""
    _check_options(o)
    sources = resolve_inputs(o.inputs, o.text_column, hf_split=o.hf_split, hf_config=o.hf_config,
                             hf_revision=o.hf_revision, text_split=o.text_split)
    spec = parse_spec(o.tokenizer, o.eos)
    encoder = None if spec.kind == "bpe" else load_encoder(spec)
    _check_documents(sources)
    forced_val = forced_validation_doc(sources, o.val_fraction)
    described = [describe(s) for s in sources]
    settings: dict[str, Any] = {"val_fraction": o.val_fraction, "shard_tokens": o.shard_tokens,
                                "text_column": o.text_column, "text_split": o.text_split, "format_version": FORMAT_VERSION,
                                "tokenizer_spec": [spec.kind, spec.name if spec.kind != "file" else Path(spec.name).name, spec.eos],
                                "tokenizer_digest": encoder.describe()["digest"] if encoder else None}
    if spec.kind == "bpe":
        settings.update(vocab_size=o.vocab_size, bpe_train_bytes=o.bpe_train_bytes)
    fingerprint = hashlib.sha256(json.dumps([settings, [d["sha256"] for d in described]]).encode()).hexdigest()

    out = Path(o.out)
    manifest_path, state_path = out / MANIFEST_NAME, out / STATE_FILE
    if manifest_path.is_file():
        done = json.loads(manifest_path.read_text())
        if done.get("fingerprint") == fingerprint:
            print(f"{manifest_path}: already prepared from these inputs and settings", file=sys.stderr)
            return manifest_path
        raise PrepareError(f"{out} holds shards prepared from other inputs or settings",
                           "choose another --out, or delete that directory to prepare again")
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state["fingerprint"] != fingerprint:
            raise PrepareError(f"{out} holds an unfinished preparation of other inputs or settings",
                               "re-run that command to finish it, choose another --out, or delete the directory")
        states = states_from_json(state)
        _check_written(out, states)
        print(f"{out}: resuming after {sum(len(s.shards) for s in states.values())} complete shards", file=sys.stderr)
    elif out.exists() and any(out.iterdir()):
        raise PrepareError(f"--out {out} is not empty and holds no lab-data preparation", "choose an empty or new directory")
    else:
        states = {s: SplitState() for s in SPLITS}
    out.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".*.tmp"):  # a file a kill interrupted mid-write (atomic_write had not renamed it)
        stray.unlink()

    def save_state() -> None:
        atomic_write(state_path, [state_to_json(fingerprint, states, {})])

    save_state()  # first: a run killed while training its tokenizer resumes rather than finding a foreign directory
    trained = out / TOKENIZER_FILE if spec.kind == "bpe" else None
    if trained is not None:
        if not trained.is_file():
            assert o.vocab_size is not None
            train_bpe(_training_texts(sources, o.val_fraction, forced_val, o.bpe_train_bytes), o.vocab_size, trained)
        encoder = load_encoder(spec, trained)
        if encoder.vocab_size < o.vocab_size:
            print(f"note: the BPE stopped at {encoder.vocab_size} ids of the {o.vocab_size} asked: the input offers "
                  "no more merges (the manifest and the model use the real size)", file=sys.stderr)
    assert encoder is not None
    write_shards(sources, spec, trained, encoder, out, states, val_fraction=o.val_fraction, forced_val=forced_val,
                 shard_tokens=o.shard_tokens, workers=o.workers, batch_bytes=o.batch_bytes, save_state=save_state,
                 progress=o.progress)
    empty = [s for s in SPLITS if not states[s].shards]
    if empty:
        n_docs = sum(states[s].documents for s in SPLITS)
        raise PrepareError(f"the {empty[0]} split got no documents ({n_docs} documents, --val-fraction {o.val_fraction}); "
                           f"{out} holds the other split's shards but no manifest",
                           "give at least two documents (or --text-split paragraph for one long text file); then "
                           "delete the directory and run again")
    doc = build_manifest(name=o.name or out.resolve().name, fingerprint=fingerprint, tokenizer=encoder.describe(),
                         vocab_size=encoder.vocab_size, eos_id=encoder.eos_id, states=states, sources=described,
                         settings=settings)
    path = write_manifest(out, doc)
    state_path.unlink()
    return path
