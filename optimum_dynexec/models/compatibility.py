"""Checks that a draft can draft for a target: same tokenizer, same special tokens."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)


def load_tokenizer(path: Optional[Path]):
    """The transformers tokenizer saved in ``path``, or None when there is none."""
    if path is None or not (Path(path) / "tokenizer_config.json").exists() and not (Path(path) / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as error:  # a broken tokenizer file should not hide behind a vocabulary check
        raise ValueError(f"could not load the tokenizer in {path}: {error}") from error


def check_draft_compatible(target_config, draft_config, target_dir: Optional[Path], draft_dir: Optional[Path]) -> None:
    """Raise ValueError when the draft's tokens do not mean the same as the target's.

    Tokenizers are compared when both directories have one (vocabulary and special tokens); otherwise the
    vocabulary sizes must match exactly. Embedding tables padded to different sizes are fine when the
    tokenizers agree.
    """
    target_tokenizer, draft_tokenizer = load_tokenizer(target_dir), load_tokenizer(draft_dir)
    fix = (
        "Use a draft from the same model family that shares the target's tokenizer, "
        "or draft with the target itself (draft='int4-self') or with prompt lookup (prompt_lookup_num_tokens=...)."
    )
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
            differing = sorted(set(target_vocab.items()) ^ set(draft_vocab.items()), key=lambda item: item[1])[:3]
            raise ValueError(
                f"the draft's tokenizer ({draft_dir}) differs from the target's ({target_dir}): "
                f"{len(target_vocab)} vs {len(draft_vocab)} tokens, e.g. {differing}. "
                f"Speculative decoding needs identical token ids. {fix}"
            )
        if target_tokenizer.eos_token_id != draft_tokenizer.eos_token_id:
            raise ValueError(
                f"the draft's eos token ({draft_tokenizer.eos_token!r}, id {draft_tokenizer.eos_token_id}) differs from the "
                f"target's ({target_tokenizer.eos_token!r}, id {target_tokenizer.eos_token_id}). {fix}"
            )
        return
    target_vocab, draft_vocab = getattr(target_config, "vocab_size", None), getattr(draft_config, "vocab_size", None)
    if target_vocab != draft_vocab:
        raise ValueError(
            f"the draft's vocabulary size ({draft_vocab}) differs from the target's ({target_vocab}) and no tokenizer "
            f"files were found to show they agree. {fix}"
        )
    logger.warning("No tokenizer files next to the target/draft; checked vocabulary sizes only.")
