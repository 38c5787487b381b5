"""Tokenizers ``lab-data`` can use, behind one small interface: ids for a batch of texts, an end-of-text id, a digest.

Specs (``--tokenizer``):

- ``bytes``: UTF-8 bytes, ids 0..255, end-of-text 256 (vocabulary 257);
- ``bpe``: a byte-level BPE trained on the input's training split with ``--vocab-size`` (Hugging Face ``tokenizers``
  ``BpeTrainer``; offline), saved as ``tokenizer.json`` beside the shards;
- ``tiktoken:NAME`` (e.g. ``tiktoken:cl100k_base``) where ``tiktoken`` is installed and its encoding is cached;
- a path to a ``tokenizer.json`` (Hugging Face ``tokenizers``), or a hub name ``org/name`` (needs network once).

A :class:`TokenizerSpec` is small and picklable, so each worker process loads its own tokenizer from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lab.shards.errors import PrepareError

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
"""End-of-text tokens looked up, in order, in a tokenizer that was not told which one to use (--eos)."""
BPE_EOS = "<|endoftext|>"
MIN_BPE_VOCAB = 258
"""256 byte tokens, end-of-text, and at least one merge."""
BYTES_EOS = 256
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str
    """bytes | bpe | tiktoken | file | hub."""
    name: str
    """The encoding name, file path or hub name ('bytes' / 'bpe' for those kinds)."""
    eos: Optional[str] = None
    """End-of-text token (its text); None: the first of EOS_CANDIDATES the vocabulary has."""


def parse_spec(text: str, eos: Optional[str] = None) -> TokenizerSpec:
    """Read ``--tokenizer``; an unknown spec fails here, before anything is read or written."""
    if text in ("bytes", "bpe"):
        return TokenizerSpec(text, text, eos)
    if text.startswith("tiktoken:"):
        try:
            import tiktoken
        except ImportError as err:
            raise PrepareError(f"--tokenizer {text} needs the tiktoken package, which is not installed",
                               "pip install 'scaling-lab[data]' (or tiktoken), or use --tokenizer bpe") from err
        name = text.split(":", 1)[1]
        if name not in tiktoken.list_encoding_names():
            raise PrepareError(f"unknown tiktoken encoding {name!r}",
                               f"use one of {', '.join(tiktoken.list_encoding_names())}")
        return TokenizerSpec("tiktoken", name, eos)
    path = Path(text).expanduser()
    if path.is_file():
        return TokenizerSpec("file", str(path.resolve()), eos)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        return TokenizerSpec("file", str((path / TOKENIZER_FILE).resolve()), eos)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(".json"):
        return TokenizerSpec("hub", text, eos)
    raise PrepareError(f"unknown tokenizer {text!r}: not bytes, bpe, tiktoken:NAME, an existing tokenizer.json "
                       "or a hub name org/name",
                       "pass --tokenizer bpe --vocab-size 4096 (trained on your data, offline), --tokenizer bytes, "
                       "or the path of a tokenizer.json")


class Encoder:
    """A loaded tokenizer: ``encode_batch(texts)`` gives one uint32 id array per text, end-of-text first."""

    vocab_size: int
    eos_id: int

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the manifest records: kind, name, digest (of what defines the tokenizer), vocab size, eos."""
        raise NotImplementedError


class BytesEncoder(Encoder):
    vocab_size, eos_id = BYTES_EOS + 1, BYTES_EOS

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            ids = np.empty(len(text.encode("utf-8")) + 1, dtype=np.uint32)
            ids[0] = BYTES_EOS
            ids[1:] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < BYTES_EOS).decode("utf-8", errors="replace")

    def describe(self) -> dict[str, Any]:
        return {"kind": "bytes", "name": "bytes", "digest": hashlib.sha256(b"utf-8 bytes, eos 256").hexdigest()}


class HFEncoder(Encoder):
    """A Hugging Face ``tokenizers.Tokenizer`` (tokenizer.json): ``encode_batch_fast`` (no offsets; tokenizers>=0.20)."""

    def __init__(self, tokenizer: Any, kind: str, name: str, digest: str, eos: Optional[str]) -> None:
        self.tokenizer, self.kind, self.name, self.digest = tokenizer, kind, name, digest
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        candidates = (eos,) if eos else EOS_CANDIDATES
        found = [tokenizer.token_to_id(token) for token in candidates]
        ids = [i for i in found if i is not None]
        if not ids:
            raise PrepareError(f"tokenizer {name} has no end-of-text token among {', '.join(candidates)}",
                               "name the one it has with --eos TOKEN")
        self.eos_id = int(ids[0])
        self.eos = candidates[found.index(ids[0])]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        out = []
        for enc in encodings:
            ids = np.empty(len(enc.ids) + 1, dtype=np.uint32)
            ids[0] = self.eos_id
            ids[1:] = enc.ids
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "digest": self.digest, "eos": self.eos}


class TiktokenEncoder(Encoder):
    def __init__(self, name: str, eos: Optional[str]) -> None:
        import tiktoken

        self.encoding = tiktoken.get_encoding(name)
        self.name = name
        self.vocab_size = self.encoding.n_vocab
        token = eos or "<|endoftext|>"
        if token not in self.encoding.special_tokens_set:
            raise PrepareError(f"tiktoken encoding {name} has no special token {token!r}",
                               f"name one of {sorted(self.encoding.special_tokens_set)} with --eos")
        self.eos = token
        self.eos_id = self.encoding.encode_single_token(token)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.array([self.eos_id, *ids], dtype=np.uint32)
                for ids in self.encoding.encode_ordinary_batch(list(texts), num_threads=1)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def describe(self) -> dict[str, Any]:
        # tiktoken has no public serialisation of its ranks: its name, size and split pattern identify it.
        ident = json.dumps([self.name, self.vocab_size, self.encoding._pat_str, sorted(self.encoding._special_tokens.items())])
        return {"kind": "tiktoken", "name": self.name, "digest": hashlib.sha256(ident.encode()).hexdigest(),
                "eos": self.eos}


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_encoder(spec: TokenizerSpec, trained: Optional[Path] = None) -> Encoder:
    """Load the tokenizer a spec names; ``trained`` is the tokenizer.json a ``bpe`` spec was trained into."""
    if spec.kind == "bytes":
        return BytesEncoder()
    if spec.kind == "tiktoken":
        return TiktokenEncoder(spec.name, spec.eos)
    from tokenizers import Tokenizer

    if spec.kind == "bpe":
        if trained is None:
            raise ValueError("a bpe tokenizer must be trained (train_bpe) before it is loaded")
        return HFEncoder(Tokenizer.from_file(str(trained)), "bpe", TOKENIZER_FILE, file_digest(trained), spec.eos or BPE_EOS)
    if spec.kind == "file":
        try:
            tokenizer = Tokenizer.from_file(spec.name)
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise PrepareError(f"{spec.name} is not a tokenizers tokenizer.json ({err})",
                               "pass the tokenizer.json of a Hugging Face tokenizer") from err
        return HFEncoder(tokenizer, "file", Path(spec.name).name, file_digest(spec.name), spec.eos)
    try:
        tokenizer = Tokenizer.from_pretrained(spec.name)
    except Exception as err:  # a network or hub error: name it and the offline way out
        raise PrepareError(f"could not load tokenizer {spec.name!r} from the Hugging Face hub ({err})",
                           "check the name and the network, or pass a local tokenizer.json, or --tokenizer bpe") from err
    digest = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
    return HFEncoder(tokenizer, "hub", spec.name, digest, spec.eos)


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> Path:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with ``vocab_size`` ids, end-of-text id 0; save it to path.

    Deterministic for the same texts in the same order (the tokenizers trainer breaks count ties by the pair's ids).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise PrepareError(f"--vocab-size {vocab_size} is too small for a byte-level BPE (256 bytes + end-of-text)",
                           f"use at least {MIN_BPE_VOCAB}, e.g. --vocab-size 4096")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    from lab.data.tokens import atomic_write

    return atomic_write(path, [tokenizer.to_str().encode("utf-8")])
