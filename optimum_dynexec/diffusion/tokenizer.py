"""A word-level ``CLIPTokenizer`` over a closed vocabulary.

Stable Diffusion pipelines (diffusers, optimum-intel, openvino-tokenizers) expect a CLIP BPE tokenizer:
a ``vocab.json`` over byte-level symbols with the ``</w>`` end-of-word suffix and a ``merges.txt``. Here
the merges are chosen so that every word of the vocabulary becomes exactly one token; any other word still
encodes, letter by letter (letters, digits and their ``</w>`` forms are in the vocabulary), so the
tokenizer never fails on a prompt. It is a real ``transformers.CLIPTokenizer``: nothing downstream needs
to know it was built here.
"""

from __future__ import annotations

import string
from typing import Sequence

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"


def _symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + SUFFIX]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to a symbol list: always the pair of lowest rank first (as CLIP does)."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks) + 1), i, pair) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, _, pair = min(pairs)
        if rank > len(ranks):
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def word_vocabulary(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a BPE in which each of ``words`` is a single token.

    Merges are added word by word, each at the lowest priority: a new merge applies only where no older
    one does, and a word that already merges to one token never reaches such a state, so words done
    earlier stay single tokens.
    """
    alphabet = string.ascii_lowercase + string.digits
    tokens = [BOS, EOS] + list(alphabet) + [c + SUFFIX for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        if not word or any(c not in alphabet for c in word):
            raise ValueError(f"vocabulary words must be non-empty lower-case letters/digits, got {word!r}")
        pieces = _bpe(_symbols(word), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
            pieces = _bpe(_symbols(word), ranks)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(words: Sequence[str], model_max_length: int = 32):
    """A ``transformers.CLIPTokenizer`` that encodes each of ``words`` as one token.

    Args:
        words: the closed vocabulary (lower-case letters and digits).
        model_max_length: the padded prompt length the pipeline asks for (and the text encoder's positions).
    """
    from transformers import CLIPTokenizer

    vocab, merges = word_vocabulary(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
