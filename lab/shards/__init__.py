"""``lab-data``: a user's text (files, JSONL, Parquet, Hugging Face datasets) → llm.c token shards + a manifest.

- :mod:`lab.shards.inputs`: sources and their documents, in one deterministic order, with digests;
- :mod:`lab.shards.tokenizers`: bytes, a BPE trained offline on the input, tiktoken, or any tokenizer.json;
- :mod:`lab.shards.writer`: the hash split, shard cuts, resume state and the parallel encoder;
- :mod:`lab.shards.manifest`: the manifest written last (read by :mod:`lab.data.manifest`);
- :mod:`lab.shards.prepare`: the checks and the order of the steps; :mod:`lab.shards.cli`: ``lab-data``.
"""
