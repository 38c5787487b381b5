"""The LightningDataModule that feeds one optimizer step per batch, starting where a resumed run left off."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from lab.config import DataConfig
from lab.data import (
    BYTES_PER_TOKEN,
    VOCAB_SIZE,
    StepBatches,
    TokenSampler,
    Tokens,
    builtin_corpus,
    load_token_files,
    load_tokens,
    validation_set,
)
from lab.data.manifest import read_manifest
from lab.data.subword import builtin_subword
from lab.lineage import DataLineage
from lab.data.prefetch import Prefetched
from lab.schedules import PlanStep

PREFETCH_STEPS = 2
"""Optimizer steps of batches a background thread prepares ahead of training (lab.data.prefetch)."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TokenData(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, seq_len: int, seed: int, plan: list[PlanStep], micro_batch: int):
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len
        self.seed = seed
        self.plan = plan
        self.micro_batch = micro_batch
        self.train_tokens: Optional[Tokens] = None
        self.val_tokens: Optional[Tokens] = None
        self.bytes_per_token: Optional[float] = None
        """UTF-8 bytes per token of the validation split (val/bpb); None where unknown (token files without a manifest)."""
        self.lineage: Optional[DataLineage] = None

    def prepare(self) -> None:
        """Build (or reuse) the corpus and open the token files; every data error surfaces here."""
        cfg = self.cfg
        if cfg.source == "builtin":
            files = builtin_corpus(Path(cfg.cache_dir), max_bytes=cfg.max_bytes)
            stem = files.train.name.removesuffix("-train.bin")
            if cfg.tokenizer == "bpe":
                assert cfg.vocab_size is not None
                sub = builtin_subword(files, cfg.vocab_size)
                train, val, self.bytes_per_token = sub.train, sub.val, sub.bytes_per_token
                self.lineage = DataLineage(f"builtin:{stem}-bpe{cfg.vocab_size}", _sha(stem + sub.digest),
                                           str(sub.train), "bpe", sub.digest, cfg.vocab_size)
            else:
                train, val, self.bytes_per_token = files.train, files.val, BYTES_PER_TOKEN
                self.lineage = DataLineage(f"builtin:{stem}", _sha(stem), str(files.train), "bytes", _sha("bytes"),
                                           VOCAB_SIZE)
            self.train_tokens, self.val_tokens = load_tokens(train), load_tokens(val)
        elif cfg.manifest:
            m = read_manifest(cfg.manifest)
            self.train_tokens = load_token_files(m.splits["train"].shards)
            self.val_tokens = load_token_files(m.splits["val"].shards)
            self.bytes_per_token = m.bytes_per_token
            self.lineage = DataLineage(m.name, m.digest, str(m.path), str(m.tokenizer.get("name")),
                                       str(m.tokenizer.get("digest")), m.vocab_size)
        else:  # token files without a manifest: no bytes per token, so no val/bpb; identity from the paths
            self.train_tokens, self.val_tokens = load_tokens(cfg.train), load_tokens(cfg.val)
            self.lineage = DataLineage(f"tokens:{cfg.train}", _sha(f"{cfg.train}|{cfg.val}"), str(cfg.train),
                                       "unknown", "unknown", 0)
        # Fails with the file named when a split cannot hold one sequence.
        validation_set(self.train_tokens, self.seq_len, 1)
        validation_set(self.val_tokens, self.seq_len, self.cfg.val_sequences)

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.val_tokens is not None, "call prepare() first"
        return validation_set(self.val_tokens, self.seq_len, self.cfg.val_sequences)

    def train_dataloader(self) -> DataLoader:
        assert self.train_tokens is not None, "call prepare() first"
        # Lightning restores global_step from the checkpoint before it asks for data, so a resumed run starts at
        # the first step it has not trained; the sequence index follows from the plan.
        start = self.trainer.global_step if self.trainer is not None else 0
        plans = self.plan
        dataset = StepBatches(
            TokenSampler(self.train_tokens, self.seq_len, self.seed), micro_batch=self.micro_batch,
            sequences_at_step=lambda step, _tokens: plans[step].sequences,
            start_step=start, start_sequence=plans[start].tokens_before // self.seq_len if start < len(plans) else 0,
            max_steps=len(plans),
            rank=self.trainer.global_rank if self.trainer is not None else 0,
            world_size=self.trainer.world_size if self.trainer is not None else 1,
        )
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        # Batching, order and resumption are StepBatches'; on CUDA a thread runs it ahead and pins the batches.
        # On a CPU the "device" is the cores themselves: a second thread only competes with the step
        # (benchmarks/train_step.py lost ~7% with it on a busy 2-core machine), so batches are gathered inline.
        source = Prefetched(dataset, depth=PREFETCH_STEPS, pin=True) if on_cuda else dataset
        return DataLoader(source, batch_size=None, num_workers=0)
