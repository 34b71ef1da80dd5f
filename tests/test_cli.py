"""optimum-cli commands: `optimum-cli export dynexec` and `optimum-cli dynexec calibrate`, run as real subprocesses
on the tiny conftest checkpoints; the exported directories are then loaded by optimum-intel (with and without
optimum_dynexec) and by openvino_genai."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import F32, copy_model_dir, load_speculative, make_tokenizer

# the optimum-cli of the interpreter running the tests (a venv's python may still find another one on PATH)
_SCRIPT = Path(sys.executable).parent / "optimum-cli"
CLI = str(_SCRIPT) if _SCRIPT.exists() else None
PROMPTS = [list(np.random.default_rng(seed).integers(4, 160, length)) for seed, length in ((0, 4), (1, 7), (2, 3))]


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    command = [CLI] if CLI else [sys.executable, "-m", "optimum.commands.optimum_cli"]
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"optimum-cli {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def export(*args, check: bool = True) -> subprocess.CompletedProcess:
    return cli("export", "dynexec", *args, check=check)


def leftovers(directory: Path) -> list[str]:
    """Hidden entries (atomic_directory's temporary `.NAME.tmp-*` / `.NAME.old-*`) left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def greedy(model, max_new_tokens: int = 24) -> list[list[int]]:
    outputs = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
        outputs.append(out[0].tolist())
    return outputs


def plain_reference(directory: Path) -> list[list[int]]:
    """Greedy outputs of the target alone, as upstream optimum-intel loads it (optimum_dynexec not imported)."""
    script = textwrap.dedent("""
        import json, sys, torch
        from optimum.intel import OVModelForCausalLM
        model = OVModelForCausalLM.from_pretrained(sys.argv[1], ov_config=json.loads(sys.argv[2]))
        outputs = []
        for prompt in json.loads(sys.argv[3]):
            ids = torch.tensor([prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
            outputs.append(out[0].tolist())
        print(json.dumps({"class": type(model).__name__, "dynexec": "optimum_dynexec" in sys.modules,
                          "outputs": outputs}))
    """)
    prompts = json.dumps([[int(t) for t in p] for p in PROMPTS])
    result = subprocess.run([sys.executable, "-c", script, str(directory), json.dumps(F32), prompts],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "OVModelForCausalLM" and not report["dynexec"]
    return report["outputs"]


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def exported(llama_pair, cli_root) -> tuple[Path, subprocess.CompletedProcess]:
    out = cli_root / "pair"
    result = export("--model", llama_pair.target_checkpoint, "--draft-model", llama_pair.draft_checkpoint, out)
    return out, result


@pytest.fixture(scope="module")
def plain_outputs(exported) -> list[list[int]]:
    return plain_reference(exported[0])


@pytest.fixture(scope="module")
def other_tokenizer_checkpoint(llama_pair, cli_root) -> Path:
    """The llama draft checkpoint with a tokenizer of the same size but other merges."""
    out = copy_model_dir(llama_pair.draft_checkpoint, cli_root / "other_tokenizer_draft",
                         skip=("tokenizer.json", "tokenizer_config.json"))
    make_tokenizer(llama_pair.vocab_size, seed=1).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prompt_file(cli_root) -> Path:
    path = cli_root / "prompts.txt"
    path.write_text("abc def ghi\n\n   \nhello world 42\nthe quick brown fox\n")
    return path


# ---------------------------------------------------------------- discovery and help


def test_help_documents_every_flag():
    text = export("--help").stdout
    for flag in ("--draft-model", "--draft-weight-format", "--self-draft", "--prompt-lookup", "--lookahead",
                 "--num-assistant-tokens", "--draft-lookup-num-tokens", "--draft-vocab-size", "--calibrate", "--calibration-prompts",
                 "--draft-after-first-token", "--dq-group-size",
                 # optimum-intel's own `export openvino` flags, reused
                 "--weight-format", "--task", "--trust-remote-code", "--group-size", "--disable-stateful"):
        assert flag in text, flag
    assert "Dynamic execution" in text and "{constant,heuristic,disco,cost}" in text
    assert "dynexec" in cli("export", "--help").stdout and "openvino" in cli("export", "--help").stdout

    group = cli("dynexec", "--help").stdout
    assert "calibrate" in group
    assert cli("dynexec").stdout == group  # no verb: the help
    verb = cli("dynexec", "calibrate", "--help").stdout
    for flag in ("PAIR_DIR", "--prompts", "--max-new-tokens", "--max-lookahead", "--device", "--no-plot"):
        assert flag in verb, flag


def test_the_register_module_is_light():
    """optimum-cli imports every register module at start-up: ours must not pull in torch / OpenVINO."""
    code = ("import sys, optimum.commands.register.register_dynexec as r; "
            "print(len(r.REGISTER_COMMANDS), sorted(m for m in ('torch', 'openvino', 'transformers', "
            "'optimum.intel', 'optimum.exporters') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "[]"]


# ---------------------------------------------------------------- export: target + draft model


def test_export_writes_a_ready_to_run_pair(exported):
    out, result = exported
    for name in ("openvino_model.xml", "openvino_model.bin", "config.json", "openvino_tokenizer.xml",
                 "openvino_detokenizer.xml", "tokenizer.json", "dynexec_config.json",
                 "draft/openvino_model.xml", "draft/openvino_model.bin", "draft/config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "dynexec_config.json").read_text())
    assert config["draft"] == "model"
    assert config["speculation"]["num_assistant_tokens"] == 4
    assert config["speculation"]["num_assistant_tokens_schedule"] == "constant"
    assert config["extra"]["export"]["draft_weight_format"] == "int4"
    for stage in ("exporting target", "exporting draft", "checking that the draft shares the target's tokenizer",
                  "done in"):
        assert stage in result.stderr, stage
    assert leftovers(out.parent) == []


def test_exported_pair_runs_speculatively_and_matches_the_plain_target(exported, plain_outputs):
    from optimum_dynexec import OVSpeculativeModelForCausalLM

    model = load_speculative(exported[0])  # OVModelForCausalLM.from_pretrained(OUT) after import optimum_dynexec
    assert isinstance(model, OVSpeculativeModelForCausalLM)
    assert model.draft_kind == "model" and model.draft_model is not None
    from optimum_dynexec.exporters.weight_compression import has_compressed_weights

    assert has_compressed_weights(model.draft_model.model)  # --draft-weight-format int4 (default)
    assert not has_compressed_weights(model.model)  # tiny target: upstream default keeps it floating point
    assert greedy(model) == plain_outputs
    assert model.last_generation_stats.draft_tokens_accepted > 0


def test_draft_directory_loads_alone(exported):
    from optimum.intel import OVModelForCausalLM

    draft = OVModelForCausalLM.from_pretrained(exported[0] / "draft", ov_config=F32)
    assert type(draft) is OVModelForCausalLM
    assert len(greedy(draft, max_new_tokens=4)) == len(PROMPTS)


def test_openvino_genai_runs_the_exported_pair(exported):
    genai = pytest.importorskip("openvino_genai")
    out = exported[0]
    prompt = "abc def ghi jk"
    plain = genai.LLMPipeline(str(out), "CPU", **F32)
    config = genai.GenerationConfig()
    config.max_new_tokens = 24
    expected = plain.generate(prompt, config)
    assert expected

    pipeline = genai.LLMPipeline(str(out), "CPU", draft_model=genai.draft_model(str(out / "draft"), "CPU", **F32), **F32)
    config.num_assistant_tokens = 3
    assert pipeline.generate(prompt, config) == expected


# ---------------------------------------------------------------- export: drafts without a draft model


def test_self_draft_export(llama_pair, cli_root):
    from optimum.intel import OVModelForCausalLM

    from optimum_dynexec.exporters.weight_compression import has_compressed_weights
    from optimum_dynexec.models.registration import original_from_pretrained

    out = cli_root / "self_draft"
    result = export("--model", llama_pair.target_checkpoint, "--self-draft", "--num-assistant-tokens", "3",
                    "--lookahead", "heuristic", "--draft-lookup-num-tokens", "5", "--draft-vocab-size", "0",
                    "--draft-after-first-token", out)
    assert "the target itself, with int4 weights" in result.stderr
    assert "group size 64" in result.stderr  # 128 does not divide the tiny hidden size (64)
    config = json.loads((out / "dynexec_config.json").read_text())
    assert config["draft"] == "int4-self"
    assert config["speculation"]["num_assistant_tokens"] == 3
    assert config["speculation"]["num_assistant_tokens_schedule"] == "heuristic"
    assert config["speculation"]["draft_lookup_num_tokens"] == 5
    assert config["speculation"]["draft_vocab_size"] == 0
    assert config["speculation"]["draft_after_first_token"] is True

    model = load_speculative(out)
    assert model.draft_model is not None and has_compressed_weights(model.draft_model.model)
    assert model.speculation_config.num_assistant_tokens_schedule == "heuristic"
    assert model.speculation_config.draft_lookup_num_tokens == 5
    assert model.speculation_config.draft_vocab_size == 0
    plain = original_from_pretrained(OVModelForCausalLM, out, ov_config=F32)
    assert greedy(model) == greedy(plain)
    assert model.last_generation_stats.proposed_per_step[0] == 0  # the saved default: the target's token first
    assert model.draft_kind == "int4-self"  # and it is saved back as such


def test_prompt_lookup_export(llama_pair, cli_root):
    from optimum.intel import OVModelForCausalLM

    from optimum_dynexec.models.registration import original_from_pretrained

    out = cli_root / "prompt_lookup"
    result = export("--model", llama_pair.target_checkpoint, "--prompt-lookup", "--num-assistant-tokens", "4", out)
    assert "exporting draft" not in result.stderr
    assert not (out / "draft").exists()
    config = json.loads((out / "dynexec_config.json").read_text())
    assert config["draft"] == "prompt-lookup" and config["speculation"]["prompt_lookup_num_tokens"] == 4

    model = load_speculative(out)
    assert model.draft_kind == "prompt-lookup" and model.draft_model is None
    plain = original_from_pretrained(OVModelForCausalLM, out, ov_config=F32)
    assert greedy(model) == greedy(plain)
    assert model.last_generation_stats.target_calls > 0

    refused = cli("dynexec", "calibrate", out, check=False)
    assert refused.returncode == 1
    assert "prompt-lookup pair" in refused.stderr and "--draft-model or --self-draft" in refused.stderr


def test_quantized_targets_ask_for_larger_activation_groups(llama_pair, exported, cli_root):
    """--dq-group-size: 'auto' writes 128 into an int8 target's IR, the weights' group size into an int4 one's,
    and leaves a floating-point one alone; a given size is written as given; OVModelForCausalLM (optimum_dynexec
    not involved) compiles the target with it."""
    import openvino as ov
    from optimum.intel import OVModelForCausalLM

    from optimum_dynexec.exporters.runtime_options import dq_group_size_of
    from optimum_dynexec.models.registration import original_from_pretrained

    def written(directory: Path):
        return dq_group_size_of(ov.Core().read_model(directory / "openvino_model.xml"))

    assert written(exported[0]) is None  # the tiny target stays floating point: nothing to quantize
    cases = ((["--weight-format", "int8"], 128), (["--weight-format", "int8", "--dq-group-size", "64"], 64),
             (["--weight-format", "int4", "--group-size", "64"], 64))
    for flags, size in cases:
        out = cli_root / f"{flags[1]}_dq{size}_{len(flags)}"
        result = export("--model", llama_pair.target_checkpoint, "--prompt-lookup", *flags, out)
        assert f"activations quantized in groups of {size}" in result.stderr
        assert written(out) == size
        assert json.loads((out / "dynexec_config.json").read_text())["extra"]["export"]["target_dq_group_size"] == (
            size if "--dq-group-size" in flags else "auto")
        plain = original_from_pretrained(OVModelForCausalLM, out)
        plain.compile()
        assert int(plain.request.get_compiled_model().get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == size
        assert leftovers(out) == []  # the IR was rewritten through a staged copy


# ---------------------------------------------------------------- calibration


def test_calibrate_at_export_and_later(llama_pair, exported, cli_root, prompt_file):
    out = cli_root / "calibrated"
    shutil.copytree(exported[0], out)  # a previous export: replaced once the new one is complete
    result = export("--model", llama_pair.target_checkpoint, "--draft-model", llama_pair.draft_checkpoint,
                    "--lookahead", "disco", "--calibrate", "--calibration-prompts", prompt_file, out)
    assert "calibrating the pair on 3 prompts" in result.stderr
    assert "replacing the previous export" in result.stderr
    config = json.loads((out / "dynexec_config.json").read_text())
    assert config["speculation"]["num_assistant_tokens_schedule"] == "disco"
    assert config["calibration"] and (out / "calibration.png").is_file()
    assert leftovers(cli_root) == []

    model = load_speculative(out)
    assert model.calibration is not None
    plain = load_speculative(exported[0])
    assert greedy(model) == greedy(plain)  # the disco lookahead changes the speed, never the greedy tokens

    (out / "calibration.png").unlink()
    later = cli("dynexec", "calibrate", out, "--prompts", prompt_file, "--max-new-tokens", "8",
                "--max-lookahead", "4", "--no-plot")
    summary = json.loads(later.stdout)
    assert isinstance(summary, dict) and summary
    assert json.loads((out / "dynexec_config.json").read_text())["calibration"]
    assert not (out / "calibration.png").exists()


@pytest.mark.parametrize("case", ["missing", "no_config", "empty_prompts"])
def test_calibrate_verb_refuses_bad_input(exported, tmp_path, case):
    pair_dir, extra = exported[0], []
    if case == "missing":
        pair_dir, expected = tmp_path / "nowhere", "does not exist"
    elif case == "no_config":
        pair_dir = copy_model_dir(exported[0], tmp_path / "target_only", skip=("draft", "dynexec_config.json"))
        expected = "has no dynexec_config.json, so it is not an exported pair"
    else:
        (tmp_path / "empty.txt").write_text("\n  \n")
        extra, expected = ["--prompts", tmp_path / "empty.txt"], "has no prompts"
    result = cli("dynexec", "calibrate", pair_dir, *extra, check=False)
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_load_prompt_file(tmp_path):
    from optimum_dynexec.commands import load_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  \r\n  indented second\nthird")
    assert load_prompt_file(path) == ["first prompt", "  indented second", "third"]
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        load_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="blank.txt has no prompts"):
        load_prompt_file(tmp_path / "blank.txt")


# ---------------------------------------------------------------- export: refused inputs


def test_draft_with_a_different_tokenizer_is_refused_before_exporting(llama_pair, other_tokenizer_checkpoint, tmp_path):
    out = tmp_path / "pair"
    result = export("--model", llama_pair.target_checkpoint, "--draft-model", other_tokenizer_checkpoint, out,
                    check=False)
    assert result.returncode == 1
    assert "draft's tokenizer" in result.stderr and "differs from the target's" in result.stderr
    assert "--self-draft" in result.stderr  # the fix, in command-line terms
    assert "exporting target" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_tokenizer_mismatch_found_after_exporting_leaves_nothing(llama_pair, other_tokenizer_checkpoint, tmp_path,
                                                                  monkeypatch):
    """Hub drafts are compared on their exported copies: the failure comes after both exports, and still
    nothing is written."""
    from optimum_dynexec.commands.export import parse_args_dynexec, resolve_options
    from optimum_dynexec.exporters import pair

    parser = argparse.ArgumentParser()
    parse_args_dynexec(parser)
    out = tmp_path / "pair"
    args = parser.parse_args(["--model", str(llama_pair.target_checkpoint),
                              "--draft-model", str(other_tokenizer_checkpoint), str(out)])
    monkeypatch.setattr(pair, "_precheck_tokenizers", lambda target, draft: None)  # as for hub ids
    with pytest.raises(pair.PairExportError, match="draft's tokenizer") as error:
        pair.export_pair(args, resolve_options(args))
    assert str(other_tokenizer_checkpoint) in str(error.value) and ".tmp-" not in str(error.value)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("flags, message", [
    ([], "say what drafts for the target: one of --draft-model ID, --self-draft, --prompt-lookup"),
    (["--self-draft", "--disable-stateful"], "--disable-stateful is not supported"),
    (["--self-draft", "--lookahead", "disco"], "add --calibrate"),
    (["--prompt-lookup", "--calibrate"], "--calibrate needs a draft model"),
    (["--self-draft", "--draft-weight-format", "int8"], "--self-draft exports the target with int4 weights"),
    (["--self-draft", "--calibration-prompts", "p.txt"], "add --calibrate"),
    (["--self-draft", "--task", "text-classification"], "--task text-classification is not supported"),
    (["--self-draft", "--num-assistant-tokens", "0"], "--num-assistant-tokens must be >= 1"),
    (["--self-draft", "--draft-lookup-num-tokens", "-1"], "--draft-lookup-num-tokens must be >= 0"),
    (["--prompt-lookup", "--draft-lookup-num-tokens", "3"], "--draft-lookup-num-tokens needs a draft model"),
    (["--self-draft", "--draft-vocab-size", "-5"], "--draft-vocab-size must be >= 0"),
    (["--self-draft", "--dq-group-size", "-1"], "--dq-group-size must be 'auto' or an integer >= 0"),
    (["--self-draft", "--dq-group-size", "large"], "--dq-group-size must be 'auto' or an integer >= 0"),
    (["--step-predictor", "p.json", "--dq-group-size", "64"], "--dq-group-size is for speculative pairs"),
    (["--prompt-lookup", "--draft-vocab-size", "4096"], "--draft-vocab-size needs a draft model"),
    (["--prompt-lookup", "--draft-after-first-token"], "--draft-after-first-token needs a draft model"),
    (["--step-predictor", "p.json", "--draft-after-first-token"], "--draft-after-first-token is for speculative pairs"),
    (["--step-predictor", "p.json", "--draft-vocab-size", "4096"], "--draft-vocab-size is for speculative pairs"),
    (["--self-draft", "--convergence-guard"], "--convergence-guard applies to --step-predictor exports"),
    (["--step-predictor", "p.json", "--min-steps", "30", "--max-steps", "10"], "--min-steps 30 is above --max-steps 10"),
    (["--step-predictor", "p.json", "--task", "text-classification"], "--step-predictor needs --task text-to-image"),
])
def test_usage_errors(llama_pair, tmp_path, flags, message):
    result = export("--model", llama_pair.target_checkpoint, *flags, tmp_path / "pair", check=False)
    assert result.returncode == 2
    assert "usage: optimum-cli export dynexec" in result.stderr and message in result.stderr
    assert not (tmp_path / "pair").exists()


def test_an_openvino_export_as_draft_source_is_refused(llama_pair, tmp_path):
    result = export("--model", llama_pair.target_checkpoint, "--draft-model", llama_pair.draft_dir,
                    tmp_path / "pair", check=False)
    assert result.returncode == 1
    assert "is an OpenVINO export, not a transformers checkpoint" in result.stderr and "save_pretrained" in result.stderr
    assert not (tmp_path / "pair").exists()


def test_non_empty_output_that_is_not_an_export_is_refused(llama_pair, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = export("--model", llama_pair.target_checkpoint, "--prompt-lookup", out, check=False)
    assert result.returncode == 1
    assert "exists and is not empty, and it is not a previous" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and leftovers(tmp_path) == []


# ---------------------------------------------------------------- loading corrupt / partial exports
# (draft/ removed, invalid JSON, version 99: tests/test_bad_inputs.py::test_saved_pair_*)


def copy_of(exported, tmp_path) -> Path:
    out = tmp_path / "pair"
    shutil.copytree(exported[0], out)
    return out


def test_exported_pair_with_truncated_draft_weights(exported, tmp_path):
    out = copy_of(exported, tmp_path)
    weights = out / "draft" / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"could not read the draft OpenVINO model in .*draft .*export the model again"):
        load_speculative(out)


def test_exported_pair_with_an_empty_draft_folder(exported, tmp_path):
    out = copy_of(exported, tmp_path)
    shutil.rmtree(out / "draft")
    (out / "draft").mkdir()
    with pytest.raises(FileNotFoundError, match=r"draft directory .*draft has no openvino_model.xml"):
        load_speculative(out)
