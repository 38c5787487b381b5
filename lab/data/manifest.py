"""The manifest ``lab-data prepare`` writes beside its shards, as training reads it.

``manifest.json`` says what the shards hold, so a run takes these from it instead of from flags a user must
remember: the vocabulary (``model.vocab_size``), the end-of-text id, the shards of each split, and bytes of text per
token (for ``val/bpb``). Its ``digest`` is the sha256 of its own canonical JSON without the ``digest`` key: the same
inputs, tokenizer and settings give the same digest, which every run records as its data's identity (lineage).

Torch-free: the writer (``lab.shards``) and analysis import it for nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = "lab-data/1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}. Fix: {fix}")


def manifest_digest(document: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of ``document`` without its ``digest`` key."""
    body = {k: v for k, v in document.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[Path, ...]
    """Absolute shard paths, in order."""
    tokens: int
    documents: int
    bytes: int
    """UTF-8 bytes of the documents' text (end-of-text tokens add none)."""

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    digest: str
    vocab_size: int
    eos_id: int
    tokenizer: dict[str, Any]
    """At least ``kind``, ``name`` and ``digest`` (sha256 of what defines the tokenizer, e.g. its tokenizer.json)."""
    splits: dict[str, SplitInfo]

    @property
    def bytes_per_token(self) -> float:
        """Bytes of text per token on the validation split: the conversion of val/loss into val/bpb."""
        return self.splits["val"].bytes_per_token


def read_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest: format, digest, splits and that every shard it lists exists."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(path, "manifest not found",
                            "give the manifest.json that `lab-data prepare --out DIR` wrote (DIR/manifest.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(path, f"not valid JSON ({err})", "re-run lab-data prepare to write it again") from err
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(path, f"format {found!r} is not {MANIFEST_FORMAT!r}", "re-run lab-data prepare")
    if doc.get("digest") != manifest_digest(doc):
        raise ManifestError(path, "its digest does not match its content (the file was edited)",
                            "re-run lab-data prepare rather than editing the manifest, so lineage stays true")
    root = path.parent
    splits = {}
    for split in SPLITS:
        info = doc["splits"].get(split)
        if not info or not info["shards"] or info["tokens"] < 1:
            raise ManifestError(path, f"the {split} split holds no tokens", "prepare more documents or change --val-fraction")
        shards = tuple(root / shard["file"] for shard in info["shards"])
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise ManifestError(path, f"{len(missing)} shard(s) listed are missing, e.g. {missing[0]}",
                                "keep the shards beside their manifest, or re-run lab-data prepare")
        splits[split] = SplitInfo(shards, int(info["tokens"]), int(info["documents"]), int(info["bytes"]))
    tok = doc["tokenizer"]
    return Manifest(path=path, name=doc["name"], digest=doc["digest"], vocab_size=int(doc["vocab_size"]),
                    eos_id=int(doc["eos_id"]), tokenizer=tok, splits=splits)
