"""The manifest ``lab-data prepare`` writes last, once every shard is complete (format: :mod:`lab.data.manifest`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, manifest_digest
from lab.data.tokens import atomic_write, token_dtype
from lab.shards.writer import SPLITS, SplitState


def build_manifest(*, name: str, fingerprint: str, tokenizer: dict[str, Any], vocab_size: int, eos_id: int,
                   states: dict[str, SplitState], sources: list[dict[str, Any]], settings: dict[str, Any]) -> dict:
    """The manifest as a dict, its ``digest`` set (sha256 of the rest, :func:`lab.data.manifest.manifest_digest`)."""
    splits = {}
    for split in SPLITS:
        state = states[split]
        tokens = sum(shard["tokens"] for shard in state.shards)
        splits[split] = {"shards": state.shards, "tokens": tokens, "documents": state.documents,
                         "bytes": state.bytes, "bytes_per_token": state.bytes / tokens if tokens else None}
    doc = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "fingerprint": fingerprint,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "token_bytes": token_dtype(vocab_size).itemsize,
        "bytes_per_token": splits["val"]["bytes_per_token"],
        "splits": splits,
        "sources": sources,
        "settings": settings,
    }
    doc["digest"] = manifest_digest(doc)
    return doc


def write_manifest(out: Path, doc: dict) -> Path:
    return atomic_write(out / MANIFEST_NAME, [json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"])
