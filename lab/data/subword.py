"""The built-in corpus with subword tokens: a byte-level BPE trained once on its training split, then cached.

Recipe (change ``_RECIPE_VERSION`` whenever it changes): the byte-level splits of :func:`lab.data.builtin_corpus`
are cut at their document separators (byte 0) into documents; a BPE of ``vocab_size`` ids (end-of-text id 0) is
trained on the training split's documents (:func:`lab.shards.tokenizers.train_bpe`, GPT-2 pre-tokenisation);
each document becomes its ids followed by end-of-text, as each byte-level document is followed by its separator.
Bytes per token counts the separators as bytes, as the byte-level corpus does, so val/bpb stays comparable between
the two tokenizations.

Cached beside the byte-level files as ``{stem}-bpe{V}.json`` (the tokenizer), ``{stem}-bpe{V}-train.bin`` /
``-val.bin`` (uint16 tokens) and ``{stem}-bpe{V}-meta.json`` (bytes per token), all written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.data.corpus import DOC_SEPARATOR, CorpusFiles
from lab.data.tokens import TOKEN_DTYPE, atomic_write, load_tokens

_RECIPE_VERSION = 1


@dataclass(frozen=True)
class SubwordCorpus:
    train: Path
    val: Path
    tokenizer: Path
    bytes_per_token: float
    """UTF-8 bytes (separators included) per token of the validation split."""
    digest: str
    """sha256 of the tokenizer.json."""


def _documents(path: Path) -> list[str]:
    data = np.asarray(load_tokens(path)).astype(np.uint8).tobytes()  # byte-level tokens are stored as uint16
    return [doc.decode("utf-8", errors="replace") for doc in data.split(bytes([DOC_SEPARATOR])) if doc]


def builtin_subword(files: CorpusFiles, vocab_size: int) -> SubwordCorpus:
    """Train (or reuse) the BPE and the subword token files of a byte-level corpus; ~seconds per MB the first time."""
    stem = files.train.name.removesuffix("-train.bin") + f"-bpe{vocab_size}-r{_RECIPE_VERSION}"
    root = files.train.parent
    tokenizer_path, meta_path = root / f"{stem}.json", root / f"{stem}-meta.json"
    train, val = root / f"{stem}-train.bin", root / f"{stem}-val.bin"
    if not (tokenizer_path.is_file() and meta_path.is_file() and train.is_file() and val.is_file()):
        from lab.shards.tokenizers import load_encoder, parse_spec, train_bpe

        train_docs = _documents(files.train)
        train_bpe(train_docs, vocab_size, tokenizer_path)
        encoder = load_encoder(parse_spec("bpe"), tokenizer_path)
        meta = {}
        for split, docs, path in (("train", train_docs, train), ("val", _documents(files.val), val)):
            ids = encoder.encode_batch(docs)  # end-of-text first in each: rotate it to the end, as the separator
            tokens = np.concatenate([np.roll(doc_ids, -1) for doc_ids in ids]).astype(TOKEN_DTYPE)
            atomic_write(path, [tokens.tobytes()])
            meta[split] = {"bytes": sum(len(d.encode("utf-8")) + 1 for d in docs), "tokens": int(tokens.size)}
        atomic_write(meta_path, [json.dumps(meta).encode("utf-8")])
    meta = json.loads(meta_path.read_text())
    return SubwordCorpus(train, val, tokenizer_path, meta["val"]["bytes"] / meta["val"]["tokens"],
                         hashlib.sha256(tokenizer_path.read_bytes()).hexdigest())
