"""benchmarks/gpu_acceptance.py --dry-run: every stage's CPU-possible part passes (about 30 s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_acceptance

from lab.data import load_tokens


def test_dry_run_passes_every_stage(tmp_path):
    assert gpu_acceptance.main(["--dry-run", "--work", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "acceptance.json").read_text())
    assert report["dry_run"] and list(report["stages"]) == ["S0", "S1", "S2", "S3", "S4"]
    assert all(stage["passed"] for stage in report["stages"].values())
    assert report["stages"]["S2"]["host_reads_per_step"] <= 1


def test_corpus_is_llmc_shards_with_a_50k_vocabulary(tmp_path):
    files = gpu_acceptance.prepare_corpus(tmp_path, 50_000, 5_000)
    train = load_tokens(files["train"])
    assert len(train) == 50_000 and int(np.max(train)) < gpu_acceptance.VOCAB
    # Learnable: each token is followed by one of four successors.
    pairs = np.stack([np.asarray(train[:-1]), np.asarray(train[1:])], axis=1)
    successors = {}
    for a, b in pairs[:20_000].tolist():
        successors.setdefault(a, set()).add(b)
    assert max(len(s) for s in successors.values()) <= 8  # chain boundaries add a few
