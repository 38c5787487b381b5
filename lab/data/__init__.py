"""Corpora, token files and deterministic, resumable sampling.

- :mod:`lab.data.corpus`: the built-in corpus (the Python standard library's source, byte-level tokens) and
  bits per byte.
- :mod:`lab.data.tokens`: flat nanoGPT ``.bin`` files and llm.c shards (uint16 or uint32 tokens), single files or globs.
- :mod:`lab.data.manifest`: the manifest ``lab-data prepare`` writes beside its shards (vocabulary, bytes per
  token, digest), as training reads it.
- :mod:`lab.data.subword`: the built-in corpus as BPE tokens (trained once, cached).
- :mod:`lab.data.sampling`: sequences by global index (same seed, same batches; resume at any step) and the
  fixed validation set.

Typical use::

    files = builtin_corpus(".cache/lab")                    # or load_tokens("data/fineweb_train_*.bin")
    sampler = TokenSampler(files.train, seq_len=256, seed=0)
    steps = StepBatches(sampler, sequences_at_step=16, micro_batch=8, max_steps=1000)
    x_val, y_val = validation_set(files.val, seq_len=256, n_sequences=32)
"""

from lab.data.corpus import (
    BYTES_PER_TOKEN,
    DOC_SEPARATOR,
    SKIP_DIRS,
    VOCAB_SIZE,
    CorpusFiles,
    SourceFile,
    bits_per_byte,
    builtin_corpus,
    is_validation,
    list_sources,
    select_sources,
    stdlib_root,
)
from lab.data.sampling import StepBatches, StepPlan, TokenSampler, validation_set
from lab.data.tokens import (
    LLMC_LLAMA3_MAGIC,
    LLMC_MAGIC,
    LLMC_VERSION,
    TokenFileError,
    Tokens,
    TokenStream,
    load_token_files,
    load_tokens,
    open_token_file,
    token_dtype,
    write_llmc_shard,
    write_tokens_bin,
)

__all__ = [
    "BYTES_PER_TOKEN",
    "DOC_SEPARATOR",
    "LLMC_LLAMA3_MAGIC",
    "LLMC_MAGIC",
    "LLMC_VERSION",
    "SKIP_DIRS",
    "VOCAB_SIZE",
    "CorpusFiles",
    "SourceFile",
    "StepBatches",
    "StepPlan",
    "TokenFileError",
    "TokenSampler",
    "TokenStream",
    "Tokens",
    "bits_per_byte",
    "builtin_corpus",
    "is_validation",
    "list_sources",
    "load_token_files",
    "load_tokens",
    "open_token_file",
    "select_sources",
    "stdlib_root",
    "token_dtype",
    "validation_set",
    "write_llmc_shard",
    "write_tokens_bin",
]
