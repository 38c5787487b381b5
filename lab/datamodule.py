"""The LightningDataModule that feeds one optimizer step per batch, starting where a resumed run left off."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from lab.config import DataConfig
from lab.data import (
    StepBatches,
    Tokens,
    TokenSampler,
    builtin_corpus,
    load_tokens,
    validation_set,
)
from lab.data.prefetch import Prefetched
from lab.schedules import PlanStep

PREFETCH_STEPS = 2
"""Optimizer steps of batches a background thread prepares ahead of training (lab.data.prefetch)."""


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

    def prepare(self) -> None:
        """Build (or reuse) the corpus and open the token files; every data error surfaces here."""
        if self.cfg.source == "builtin":
            files = builtin_corpus(Path(self.cfg.cache_dir), max_bytes=self.cfg.max_bytes)
            train, val = files.train, files.val
        else:
            train, val = self.cfg.train, self.cfg.val
        self.train_tokens, self.val_tokens = load_tokens(train), load_tokens(val)
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
