"""lab-data prepare's tokens/s against a plain loop calling the same tokenizer's batch encoder on the same files.

Setup (not timed): N synthetic English-like text files and a byte-level BPE (``--vocab-size``) trained on them,
saved as a tokenizer.json that every arm loads, so no arm pays for training. Arms, in alternating order per round
(ABC, CBA, ...) so a noisy neighbour hurts all alike:

- *loop*: read each file, call ``Tokenizer.encode_batch_fast`` on batches of about 1 MB of text, count the ids;
  nothing else (no split, no shards, no manifest);
- *lab-data, 1 process*: ``lab.shards.prepare`` with ``--workers 1`` into a fresh directory: reading, hashing the
  split, the batch encoder, shards, source digests and the manifest;
- *lab-data, 2 processes*: the same with ``--workers 2``.

The loop and the one-process run use the encoder's own threads the same way (Hugging Face tokenizers parallelises
a batch over its Rayon pool); worker processes run one thread each. Reported: median seconds and tokens/s per arm,
the one-process ratio (target >= 0.9 of the loop) and the two-process speed-up over one process.

    python benchmarks/data_prep.py --json benchmarks/results/data_prep.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lab.shards.prepare import PrepareOptions, prepare
from lab.shards.tokenizers import train_bpe

TARGET = 0.9
BATCH_BYTES = 1 << 20


def make_corpus(root: Path, files: int, kb_per_file: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    words = [("".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(1, 9)))) for _ in range(3000)]
    paths = []
    for i in range(files):
        text, size = [], 0
        while size < kb_per_file * 1024:
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25))).capitalize() + ". "
            text.append(sentence + ("\n\n" if rng.random() < 0.1 else ""))
            size += len(sentence)
        path = root / f"doc{i:04d}.txt"
        path.write_text("".join(text))
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], tokenizer_json: Path) -> tuple[float, int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    t0 = time.perf_counter()
    tokens, batch, size = 0, [], 0
    for path in paths:
        text = path.read_text()
        batch.append(text)
        size += len(text)
        if size >= BATCH_BYTES:
            tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
            batch, size = [], 0
    if batch:
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
    return time.perf_counter() - t0, tokens


def lab_data(root: Path, tokenizer_json: Path, workers: int, out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = prepare(PrepareOptions(inputs=(str(root / "*.txt"),), tokenizer=str(tokenizer_json), out=out,
                                      workers=workers, progress=False, batch_bytes=BATCH_BYTES))
    seconds = time.perf_counter() - t0
    doc = json.loads(manifest.read_text())
    return seconds, sum(split["tokens"] for split in doc["splits"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--kb-per-file", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/data_prep.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        root.mkdir()
        paths = make_corpus(root, args.files, args.kb_per_file)
        tokenizer_json = train_bpe((p.read_text() for p in paths), args.vocab_size, Path(tmp) / "tokenizer.json")
        arms = {"loop": lambda: plain_loop(paths, tokenizer_json),
                "lab_data_1": lambda: lab_data(root, tokenizer_json, 1, Path(tmp) / "out1"),
                "lab_data_2": lambda: lab_data(root, tokenizer_json, 2, Path(tmp) / "out2")}
        arms["lab_data_1"]()  # warm the page cache and imports once, untimed
        times: dict[str, list[float]] = {name: [] for name in arms}
        tokens: dict[str, int] = {}
        for r in range(args.rounds):
            for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
                seconds, tokens[name] = arms[name]()
                times[name].append(seconds)
        n_bytes = sum(p.stat().st_size for p in paths)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    # lab-data's count adds one end-of-text id per document: compare speeds on the loop's (text) token count.
    rate = {name: tokens["loop"] / median[name] for name in arms}
    result = {
        "input_bytes": n_bytes, "files": args.files, "vocab_size": args.vocab_size, "rounds": args.rounds,
        "text_tokens": tokens["loop"], "lab_data_tokens": tokens["lab_data_1"],
        "seconds": median, "seconds_all": times, "tokens_per_s": rate,
        "ratio_1_process_vs_loop": median["loop"] / median["lab_data_1"],
        "speedup_2_processes": median["lab_data_1"] / median["lab_data_2"],
        "target": TARGET, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "encoder": "tokenizers.Tokenizer.encode_batch_fast", "batch_bytes": BATCH_BYTES,
    }
    for name in arms:
        print(f"{name:>11}: {median[name]:6.2f} s  {rate[name] / 1e6:6.2f} M tokens/s")
    print(f"lab-data, 1 process / plain loop: {result['ratio_1_process_vs_loop']:.2f}x (target >= {TARGET}); "
          f"2 processes / 1: {result['speedup_2_processes']:.2f}x; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
