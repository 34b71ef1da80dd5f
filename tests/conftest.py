"""Shared fixtures: tiny random Llama- and Qwen2-style target/draft pairs, exported once per test run.

Random tiny decoders have near-uniform logits, so nothing would ever be accepted and eos would never be
hit. The targets here are built so that a smaller draft agrees with them often but not always:

* the LM head is scaled up (peaked, non-trivial next-token distributions, repetitive loops, eos hits);
* the target's layers after the first ``draft_layers`` contribute weakly to the residual stream;
* the draft is the target's first ``draft_layers`` layers (same embeddings, norm and head) with small
  noise added to every weight: a smaller, different model over the same vocabulary.

Every model is exported through optimum-intel (stateful, as users get it) and runs with ``F32``, the
properties under which "k tokens in one call" and "one token per call" logits agree to ~1e-5 (DESIGN.md,
'Facts measured'), so greedy outputs must match token for token.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

# tests never touch the hub (no network here); fail fast instead of waiting for timeouts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_POSITIONS = 256


def make_tokenizer(vocab_size: int, seed: int = 0):
    """A real fast BPE tokenizer with exactly ``vocab_size`` ids: specials 0-3, a word-start marker, letters and
    digits, then merges (chosen by ``seed``) up to the size. Any lower-case alphanumeric text encodes, and
    every id decodes to text, so ``decode``, streamers and stop strings work as with a real model's tokenizer.
    """
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = {token: i for i, token in enumerate(specials + ["\u2581"] + characters)}
    merges = []
    rng = random.Random(seed)
    pieces = list(vocab)[len(specials):]
    while len(vocab) < vocab_size:
        left, right = rng.choice(pieces), rng.choice(characters)
        if left + right not in vocab:
            merges.append((left, right))
            vocab[left + right] = len(vocab)
            pieces.append(left + right)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@dataclass
class TinyPair:
    """Paths of one exported target/draft pair and the checkpoints they came from."""

    arch: str
    vocab_size: int
    target_dir: Path  # OpenVINO export (stateful) + tokenizer
    draft_dir: Path  # OpenVINO export (stateful) + the same tokenizer
    target_checkpoint: Path  # transformers checkpoint of the target (+ tokenizer)
    draft_checkpoint: Path  # transformers checkpoint of the draft (+ tokenizer)
    tokenizer: object


def _config(arch: str, vocab_size: int, num_layers: int):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )


def build_target(arch: str, vocab_size: int, num_layers: int, draft_layers: int, seed: int,
                 head_scale: float = 10.0, late_layer_scale: float = 0.2):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[arch]
    torch.manual_seed(seed)
    model = cls(_config(arch, vocab_size, num_layers)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        for layer in model.model.layers[draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(late_layer_scale)
            layer.mlp.down_proj.weight.mul_(late_layer_scale)
    return model


def build_draft(target, num_layers: int, noise: float, seed: int):
    """The target's first ``num_layers`` layers, every weight perturbed by ``noise`` x its std."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    draft = type(target)(config).eval()
    state = {
        name: value for name, value in target.state_dict().items()
        if not name.startswith("model.layers.") or int(name.split(".")[2]) < num_layers
    }
    draft.load_state_dict(state)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            if parameter.numel() > 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise * parameter.std())
    return draft


def export_openvino(checkpoint: Path, out: Path, tokenizer=None, stateful: bool = True) -> Path:
    """Export a transformers checkpoint the way a user does, and save it as an OpenVINO directory."""
    from optimum.intel import OVModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = OVModelForCausalLM.from_pretrained(checkpoint, export=True, compile=False, stateful=stateful)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _make_pair(factory, arch: str, vocab_size: int, target_layers: int, draft_layers: int, seed: int,
               noise: float) -> TinyPair:
    root = factory.mktemp(f"{arch}_pair")
    tokenizer = make_tokenizer(vocab_size)
    target = build_target(arch, vocab_size, target_layers, draft_layers, seed)
    draft = build_draft(target, draft_layers, noise, seed + 1)
    paths = {}
    for name, model in (("target", target), ("draft", draft)):
        checkpoint = root / f"{name}_checkpoint"
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        paths[name] = (checkpoint, export_openvino(checkpoint, root / f"{name}_ov", tokenizer))
    return TinyPair(arch, vocab_size, paths["target"][1], paths["draft"][1], paths["target"][0], paths["draft"][0],
                    tokenizer)


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory) -> TinyPair:
    """Llama-style: target 4 layers, draft = its first 2 layers + noise; vocabulary 160."""
    return _make_pair(tmp_path_factory, "llama", 160, target_layers=4, draft_layers=2, seed=0, noise=0.05)


@pytest.fixture(scope="session")
def qwen2_pair(tmp_path_factory) -> TinyPair:
    """Qwen2-style (attention biases): target 3 layers, draft = its first layer + noise; vocabulary 192."""
    return _make_pair(tmp_path_factory, "qwen2", 192, target_layers=3, draft_layers=1, seed=10, noise=0.05)


@pytest.fixture(params=["llama", "qwen2"])
def pair(request) -> TinyPair:
    """Both architectures, one after the other."""
    return request.getfixturevalue(f"{request.param}_pair")


def load_plain(directory: Path):
    """The target alone, as upstream optimum-intel loads it (reference for exactness)."""
    from optimum.intel import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(directory, ov_config=F32)


def load_speculative(target: Path, **kwargs):
    import optimum_dynexec  # noqa: F401  (registers the draft flags)
    from optimum.intel import OVModelForCausalLM

    kwargs.setdefault("ov_config", F32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # exports (export=True) trace the model
        return OVModelForCausalLM.from_pretrained(target, **kwargs)


_LOADED: dict = {}


@pytest.fixture(scope="session")
def loaded():
    """Session cache of loaded models: ``loaded(key, factory)``; compile each tiny model once per run."""

    def get(key, factory):
        if key not in _LOADED:
            _LOADED[key] = factory()
        return _LOADED[key]

    yield get
    _LOADED.clear()


@pytest.fixture
def plain(pair, loaded):
    return loaded(("plain", pair.arch), lambda: load_plain(pair.target_dir))


@pytest.fixture
def speculative(pair, loaded):
    """Target + its draft model, loaded through ``OVModelForCausalLM.from_pretrained(..., draft_model=...)``."""
    return loaded(("speculative", pair.arch), lambda: load_speculative(pair.target_dir, draft_model=pair.draft_dir))


@pytest.fixture
def stateful_speculative(pair, loaded):
    """The same pair with the loop driving the models' own stateful requests (``kv_cache="stateful"``; the
    default on CPU is paged attention)."""
    return loaded(("speculative-stateful", pair.arch),
                  lambda: load_speculative(pair.target_dir, draft_model=pair.draft_dir, kv_cache="stateful"))


@pytest.fixture
def llama_plain(llama_pair, loaded):
    return loaded(("plain", "llama"), lambda: load_plain(llama_pair.target_dir))


@pytest.fixture
def llama_speculative(llama_pair, loaded):
    return loaded(("speculative", "llama"),
                  lambda: load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir))


def copy_model_dir(source: Path, destination: Path, skip: tuple = ()) -> Path:
    """A copy of a model directory without the files named in ``skip``."""
    destination.mkdir(parents=True)
    for item in source.iterdir():
        if item.name not in skip:
            shutil.copy2(item, destination / item.name)
    return destination


def chi_square_pvalue(observed: np.ndarray, expected_probs: np.ndarray) -> float:
    """p-value of the ids in ``observed`` being drawn from ``expected_probs`` (Pearson's chi-square).

    Cells expected fewer than 5 times are merged into one; drawing an id of probability 0 gives 0.
    """
    from scipy import stats

    expected_probs = np.asarray(expected_probs, dtype=np.float64)
    counts = np.bincount(np.asarray(observed), minlength=len(expected_probs)).astype(np.float64)
    if len(counts) > len(expected_probs):
        return 0.0  # an id outside the distribution was drawn
    expected = expected_probs / expected_probs.sum() * len(observed)
    if counts[expected == 0].sum() > 0:
        return 0.0  # an id of probability 0 was drawn
    big = expected >= 5
    observed_cells, expected_cells = counts[big], expected[big]
    if (~big).any() and expected[~big].sum() > 0:
        observed_cells = np.append(observed_cells, counts[~big].sum())
        expected_cells = np.append(expected_cells, expected[~big].sum())
    return float(stats.chisquare(observed_cells, expected_cells).pvalue)
