"""`lab-data`: text → token shards with a manifest that `lab-train data=tokens data.manifest=...` reads.

    lab-data prepare --input 'docs/*.txt' --tokenizer bpe --vocab-size 4096 --out shards/
    lab-data prepare --input corpus.jsonl --text-column body --tokenizer path/to/tokenizer.json --out shards/
    lab-data prepare --input hf:roneneldan/TinyStories --tokenizer tiktoken:gpt2 --workers 8 --out shards/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab-data", description="Prepare token shards for lab-train.")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="text, JSONL, Parquet or a Hugging Face dataset -> token shards + manifest.json")
    q.add_argument("--input", action="append", required=True, metavar="SPEC",
                   help="file, glob ('docs/*.txt'), .jsonl/.parquet with --text-column, or hf:NAME; repeatable")
    q.add_argument("--tokenizer", required=True,
                   help="bpe (trained here, needs --vocab-size), bytes, tiktoken:NAME, a tokenizer.json, or org/name")
    q.add_argument("--vocab-size", type=int, help="bpe: vocabulary size to train, end-of-text included")
    q.add_argument("--out", required=True, type=Path, help="output directory (new or empty; or an unfinished run)")
    q.add_argument("--text-column", default="text", help="JSONL / Parquet / dataset column holding the text")
    q.add_argument("--text-split", default="file", choices=("file", "paragraph"),
                   help="text files: one document per file (default) or per blank-line-separated paragraph")
    q.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (by content hash)")
    q.add_argument("--shard-tokens", type=int, default=50_000_000, help="tokens per shard")
    q.add_argument("--workers", type=int, default=1, help="encoding processes")
    q.add_argument("--eos", help="end-of-text token of a given tokenizer (default: looked up)")
    q.add_argument("--name", help="dataset name in the manifest and in run lineage (default: --out's name)")
    q.add_argument("--hf-split", default="train")
    q.add_argument("--hf-config")
    q.add_argument("--hf-revision")
    q.add_argument("--bpe-train-bytes", type=float, default=2**30, help="bpe: train on at most this much text")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parser().parse_args(argv)
    from lab.shards.errors import PrepareError
    from lab.shards.prepare import PrepareOptions, prepare

    options = PrepareOptions(
        inputs=tuple(args.input), tokenizer=args.tokenizer, out=args.out, vocab_size=args.vocab_size,
        text_column=args.text_column, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
        workers=args.workers, eos=args.eos, name=args.name, text_split=args.text_split, hf_split=args.hf_split,
        hf_config=args.hf_config, hf_revision=args.hf_revision, bpe_train_bytes=int(args.bpe_train_bytes),
        progress=not args.no_progress)
    try:
        manifest = prepare(options)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from lab.data.manifest import read_manifest

    m = read_manifest(manifest)
    train, val = m.splits["train"], m.splits["val"]
    print(f"{manifest}: vocab {m.vocab_size:,} (eos {m.eos_id}), train {train.tokens:,} tokens in {len(train.shards)} "
          f"shards, val {val.tokens:,} tokens, {m.bytes_per_token:.3f} bytes/token, digest {m.digest[:12]}")
    print(f"train on it: lab-train data=tokens data.manifest={manifest}")


if __name__ == "__main__":
    main()
