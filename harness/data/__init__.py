"""Corpora and tokens: tokenizers, the verified corpus cache, token shards, `data prepare`, and the
order of the global batches."""
