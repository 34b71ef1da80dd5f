"""The benchmark entry point.

    python -m benchmarks.run --preset smollm2                 # configs/bench-smollm2.yaml
    python -m benchmarks.run --preset qwen --runs 5
    python -m benchmarks.run --config my.yaml --methods 'baseline,ours/pair/k=4,genai*' --runs 1
    python -m benchmarks.run --preset qwen --list             # the rows a preset expands to

Protocol (docs: /work/shared/DESIGN.md, 'Benchmarks'): the same chat-templated prompts for every method,
greedy, ``max_new_tokens`` new tokens, ``warmup`` untimed calls per method, the median of ``runs`` timed
runs per prompt; tokens/s = new tokens / wall time of ``generate``; ratios against the baselines measured
in the same run; agreement with the optimum-intel baseline's greedy tokens (the reference).

Writes ``results.json`` (after every method, so an interrupted run keeps what it measured),
``results.md`` and PNG plots into ``--out`` (default ``benchmarks/results/<preset>-<timestamp>/``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import statistics
import sys
import time
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from optimum_dynexec.configuration import EXACT_OV_CONFIG

from . import hardware, report
from .methods import (
    ANCHOR_TYPES,
    Generation,
    Method,
    MethodFailed,
    ModelPool,
    assign_resources,
    expand_methods,
    make_runner,
    memory_groups,
    order_methods,
)

ROOT = Path(__file__).resolve().parents[1]
#: the properties under which k-token and one-token target calls give the same logits (DESIGN.md, 'Facts measured')
CONFIGS = ROOT / "configs"
logger = logging.getLogger("benchmarks")


# ---------------------------------------------------------------------------------------------- config


def preset_path(name: str) -> Path:
    for candidate in (CONFIGS / f"bench-{name}.yaml", CONFIGS / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    known = sorted(p.stem.removeprefix("bench-") for p in CONFIGS.glob("bench-*.yaml"))
    raise SystemExit(f"unknown preset {name!r}; known presets: {', '.join(known)} (or pass --config PATH)")


def load_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise SystemExit(f"{path} is not a YAML mapping")
    for key in ("target", "methods"):
        if key not in config:
            raise SystemExit(f"{path}: missing `{key}:`")
    config.setdefault("name", path.stem.removeprefix("bench-"))
    config.setdefault("drafts", {})
    config.setdefault("ov_config", {"PERFORMANCE_HINT": "LATENCY"})
    config.setdefault("prompts", "prompts")
    config.setdefault("max_new_tokens", 128)
    config.setdefault("runs", 3)
    config.setdefault("warmup", 1)
    config["_path"] = str(path)
    return config


def load_prompts(config: dict) -> list[dict]:
    """``prompts:`` is a directory of *.txt (relative to the config file) or a list of {name, text}."""
    spec = config["prompts"]
    if isinstance(spec, str):
        directory = Path(spec)
        if not directory.is_absolute():
            directory = Path(config["_path"]).parent / directory
        files = sorted(directory.glob("*.txt"))
        if not files:
            raise SystemExit(f"no *.txt prompts in {directory}")
        return [{"name": f.stem, "text": f.read_text().strip()} for f in files]
    prompts = [{"name": p["name"], "text": p["text"].strip()} for p in spec]
    if not prompts:
        raise SystemExit("the preset has no prompts")
    return prompts


def select_methods(methods: list[Method], patterns: Optional[str]) -> list[Method]:
    """``--methods`` filter: comma-separated ids or globs (``ours/*/k=4``, ``genai*``); baseline always runs."""
    if not patterns:
        return methods
    terms = [t.strip() for t in patterns.split(",") if t.strip()]
    chosen = [m for m in methods if m.type == "baseline" or any(fnmatch.fnmatchcase(m.id, t) for t in terms)]
    unmatched = [t for t in terms if not any(fnmatch.fnmatchcase(m.id, t) for m in methods)]
    if unmatched:
        raise SystemExit(
            f"--methods: {unmatched} match no method of this preset; its methods are:\n  "
            + "\n  ".join(m.id for m in methods)
        )
    return chosen


# ------------------------------------------------------------------------------------------ measuring


def _one_line(text: str, limit: int = 400) -> str:
    """An error message on one line (OpenVINO's start with a source path and a newline)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _median_index(values: list[float]) -> int:
    """Index of the run whose value is the (lower) median."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(order) - 1) // 2]


def _new_record(method: Method) -> dict:
    return {**method.describe(), "status": "ok", "per_prompt": {}}


def _add_run(record: dict, prompt: dict, generation: Generation, last_run: bool) -> None:
    entry = record["per_prompt"].setdefault(prompt["name"], {"runs": [], "tokens": None})
    stats = dict(generation.stats or {})
    if not last_run:  # keep the per-step lists of the last run only
        stats.pop("proposed_per_step", None)
        stats.pop("accepted_per_step", None)
    entry["runs"].append({
        "new_tokens": len(generation.tokens),
        "seconds": generation.seconds,
        "tokens_per_second": generation.tokens_per_second,
        "decode_tokens_per_second": generation.decode_tokens_per_second,
        "first_tokens_seconds": generation.first_tokens_seconds,
        "stats": stats or None,
    })
    if entry["tokens"] is None:
        entry["tokens"] = generation.tokens
    else:
        entry["deterministic"] = entry.get("deterministic", True) and entry["tokens"] == generation.tokens


def _record_failure(record: dict, method: Method, error: Exception) -> None:
    if isinstance(error, MethodFailed):
        record["status"] = "fails"
        record["error"] = _one_line(str(error))
        logger.warning("%s fails: %s", method.id, record["error"])
    else:  # keep benchmarking the other methods
        record["status"] = "error"
        record["error"] = _one_line(f"{type(error).__name__}: {error}")
        record["traceback"] = traceback.format_exc()
        logger.error("%s raised %s", method.id, record["error"])


def _finish_record(record: dict) -> dict:
    for entry in record["per_prompt"].values():
        tps = [r["tokens_per_second"] for r in entry["runs"]]
        entry["median_tokens_per_second"] = statistics.median(tps)
        entry["median_run"] = _median_index(tps)
        for name in ("decode_tokens_per_second", "first_tokens_seconds"):
            values = [r.get(name) for r in entry["runs"]]
            if values and None not in values:
                entry[f"median_{name}"] = statistics.median(values)
    return record


def measure_method(method: Method, runner, prompts: list[dict], runs: int, warmup: int, progress) -> dict:
    """Warm-up, then ``runs`` timed runs per prompt; returns the method's raw record."""
    record = _new_record(method)
    try:
        for _ in range(warmup):
            runner(prompts[0]["ids"])
        for run_index in range(runs):
            for prompt in prompts:
                _add_run(record, prompt, runner(prompt["ids"]), last_run=run_index == runs - 1)
                progress.update(1)
    except Exception as error:
        _record_failure(record, method, error)
    return _finish_record(record)


def measure_interleaved(methods: list[Method], runners: dict, prompts: list[dict], runs: int, warmup: int,
                        progress) -> dict[str, dict]:
    """Every method on the same prompt back to back (the order rotating each time), run after run: slow drifts
    of this shared machine then hit every method alike instead of whichever ran during them."""
    records = {m.id: _new_record(m) for m in methods}
    active = []
    for method in methods:
        try:
            for _ in range(warmup):
                runners[method.id](prompts[0]["ids"])
            active.append(method)
        except Exception as error:
            _record_failure(records[method.id], method, error)
            progress.update(runs * len(prompts))
    turn = 0
    for run_index in range(runs):
        for prompt in prompts:
            order = active[turn % max(len(active), 1):] + active[: turn % max(len(active), 1)]
            turn += 1
            for method in order:
                if records[method.id]["status"] != "ok":
                    continue
                progress.set_postfix_str(method.id)
                try:
                    generation = runners[method.id](prompt["ids"])
                except Exception as error:
                    _record_failure(records[method.id], method, error)
                    continue
                _add_run(records[method.id], prompt, generation, last_run=run_index == runs - 1)
                progress.update(1)
    return {key: _finish_record(record) for key, record in records.items()}


def _measure_group(group: list[Method], pool: ModelPool, prompts: list[dict], config: dict, progress) -> dict[str, dict]:
    """The methods of one memory group, interleaved (their runners and the models only they use go afterwards)."""
    runners, failed = {}, {}
    for method in group:
        try:
            runners[method.id] = make_runner(method, pool, config["max_new_tokens"])
        except Exception as error:
            failed[method.id] = _new_record(method)
            _record_failure(failed[method.id], method, error)
            progress.update(config["runs"] * len(prompts))
    records = measure_interleaved([m for m in group if m.id in runners], runners, prompts,
                                  config["runs"], config["warmup"], progress)
    records.update(failed)
    return records


def _merge_records(parts: list[dict]) -> dict:
    """One row from the records of the same method measured in several groups (every run counts)."""
    if len(parts) == 1:
        return parts[0]
    failed = next((part for part in parts if part["status"] != "ok"), None)
    if failed is not None:
        return failed
    merged = {**parts[0], "per_prompt": {}, "groups_measured": len(parts)}
    for part in parts:
        for name, entry in part["per_prompt"].items():
            target = merged["per_prompt"].setdefault(name, {"runs": [], "tokens": entry["tokens"]})
            target["runs"].extend(entry["runs"])
            target["deterministic"] = (target.get("deterministic", True) and entry.get("deterministic", True)
                                       and entry["tokens"] == target["tokens"])
    return _finish_record(merged)


def _prepare_prompts(prompts: list[dict], tokenizer) -> None:
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt["text"]}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="np")["input_ids"][0].astype(np.int64)
        prompt["templated"] = text
        prompt["ids"] = ids
        prompt["prompt_tokens"] = int(ids.size)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    for name in ("transformers", "optimum", "nncf", "openvino", "optimum.intel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="configs/bench-<preset>.yaml (smollm2, qwen)")
    source.add_argument("--config", type=Path, help="a benchmark YAML file")
    parser.add_argument("--runs", type=int, help="timed runs per prompt (median reported; preset default 3)")
    parser.add_argument("--warmup", type=int, help="untimed generate calls per method (preset default 1)")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per generate (preset default 128)")
    parser.add_argument("--methods", help="comma-separated method ids or globs, e.g. 'ours/pair/k=4,genai*' "
                                          "(baseline always runs: it is the agreement reference)")
    parser.add_argument("--prompts", help="comma-separated prompt names (default: all of the preset)")
    parser.add_argument("--ov-config", help="override/extend the preset's ov_config for every method: "
                                            "KEY=VALUE,KEY=VALUE (e.g. INFERENCE_PRECISION_HINT=f32)")
    parser.add_argument("--exact-numerics", action="store_true",
                        help=f"add {EXACT_OV_CONFIG} (DESIGN.md: then ours, GenAI and the baseline agree token for "
                             "token; use it to validate agreement, not for speed)")
    parser.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<preset>-<timestamp>/)")
    parser.add_argument("--list", action="store_true", help="print the preset's method ids and exit")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--sequential", dest="interleave", action="store_false",
                        help="run the methods one after the other, releasing each model after its last method; by "
                             "default the methods take turns on each prompt, so that drifts of a shared machine affect "
                             "all of them alike, one memory group at a time (a draft's rows, the prompt-lookup rows; "
                             "the baseline and GenAI plain run in every group and anchor its ratios)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Optional[list[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        _quiet_libraries()
    config_path = preset_path(args.preset) if args.preset else args.config
    config = load_config(config_path)
    for name in ("runs", "warmup", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    if args.exact_numerics:
        config["ov_config"] = {**config["ov_config"], **EXACT_OV_CONFIG}
    if args.ov_config:
        for item in args.ov_config.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"--ov-config: expected KEY=VALUE, got {item!r}")
            config["ov_config"][key.strip()] = value.strip()
    if config["runs"] < 1:
        raise SystemExit("--runs must be >= 1")

    methods = expand_methods(config["methods"], config["drafts"])
    if args.list:
        for m in methods:
            print(m.id)
        return config_path
    methods = select_methods(methods, args.methods)
    if not any(m.type == "baseline" for m in methods):
        methods.insert(0, Method("baseline", "baseline"))
    assign_resources(methods, config["drafts"])
    methods = order_methods(methods)

    prompts = load_prompts(config)
    if args.prompts:
        wanted = [p.strip() for p in args.prompts.split(",")]
        missing = sorted(set(wanted) - {p["name"] for p in prompts})
        if missing:
            raise SystemExit(f"--prompts: unknown {missing}; the preset has {[p['name'] for p in prompts]}")
        prompts = [p for p in prompts if p["name"] in wanted]

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"{config['name']}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    record_argv = [sys.argv[0] if argv is None else "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    results: dict[str, Any] = {
        "format": 1,
        "preset": config["name"],
        "config_file": str(config_path),
        "config": {k: v for k, v in config.items() if not k.startswith("_")},
        "started": datetime.now().isoformat(timespec="seconds"),
        "protocol": {
            "max_new_tokens": config["max_new_tokens"], "runs": config["runs"], "warmup": config["warmup"],
            "decoding": "greedy", "ov_config": config["ov_config"],
            "order": "interleaved: every method on the same prompt back to back, the order rotating"
                     if args.interleave else "sequential: each method's runs one after the other",
            "timing": "wall time of one generate call (time.perf_counter); tokens/s = new tokens / seconds; "
                      "per prompt the median over runs; per method the mean over prompts of those medians",
            "agreement_reference": "optimum-intel baseline (greedy) tokens of the same prompt, first timed run",
            "baseline_note": "the baseline is optimum-intel's upstream OVModelForCausalLM.generate, called on the "
                             "same compiled target model as ours (loaded once)",
        },
        "hardware": hardware.collect(record_argv),
        "methods": [],
    }
    logger.info("preset %s -> %s", config["name"], out)
    logger.info("hardware: %s", hardware.summary_line(results["hardware"]))

    from tqdm.auto import tqdm

    pool = ModelPool(config["target"], config["drafts"], config["ov_config"])
    # resolve (and on first use convert / export) every model directory before anything is timed
    pool.prepare(methods)
    for key, path in pool.directories().items():
        logger.info("%s: %s", key, path)
    _prepare_prompts(prompts, pool.tokenizer())
    results["prompts"] = [
        {"name": p["name"], "text": p["text"], "prompt_tokens": p["prompt_tokens"]} for p in prompts
    ]

    last_use = {}
    for index, m in enumerate(methods):
        for key in m.resources:
            last_use[key] = index
    total = len(methods) * config["runs"] * len(prompts)  # timed calls (warm-ups not counted)
    started = time.perf_counter()
    if args.interleave:
        groups = memory_groups(methods)
        results["groups"] = []
        total = sum(len(group) for _, group in groups) * config["runs"] * len(prompts)
        last_group = {key: index for index, (_, group) in enumerate(groups) for m in group for key in m.resources}
        anchor_records: dict[str, list[dict]] = {}
        records: dict[str, dict] = {}
        with tqdm(total=total, desc="generate (interleaved)", unit="call", dynamic_ncols=True) as progress:
            for index, (name, group) in enumerate(groups):
                if len(groups) > 1:
                    logger.info("group %d/%d (%s): %d methods", index + 1, len(groups), name, len(group))
                group_records = _measure_group(group, pool, prompts, config, progress)
                results["groups"].append({"name": name, "methods": [m.id for m in group], "anchors": {
                    m.id: {p: e["median_tokens_per_second"] for p, e in group_records[m.id]["per_prompt"].items()}
                    for m in group if m.type in ANCHOR_TYPES and group_records[m.id]["status"] == "ok"
                }})
                for m in group:
                    if m.type in ANCHOR_TYPES:
                        anchor_records.setdefault(m.id, []).append(group_records[m.id])
                    else:
                        records[m.id] = {**group_records[m.id], "group": name}
                records.update({key: _merge_records(parts) for key, parts in anchor_records.items()})
                results["methods"] = [records[m.id] for m in methods if m.id in records]
                _write_json(out, results, pool)
                for key, last in last_group.items():  # the next groups hold only their own models
                    if last == index:
                        pool.release(key)
        pool.release_all()
    with tqdm(total=0 if args.interleave else total, desc="generate", unit="call", dynamic_ncols=True,
              disable=args.interleave) as progress:
        for index, method in enumerate([] if args.interleave else methods):
            progress.set_postfix_str(method.id)
            try:
                runner = make_runner(method, pool, config["max_new_tokens"])
            except MethodFailed as error:
                record = {**method.describe(), "status": "fails", "error": _one_line(str(error)), "per_prompt": {}}
            except Exception as error:
                record = {**method.describe(), "status": "error", "per_prompt": {},
                          "error": _one_line(f"{type(error).__name__}: {error}"), "traceback": traceback.format_exc()}
                logger.error("could not set up %s: %s", method.id, record["error"])
            else:
                record = measure_method(method, runner, prompts, config["runs"], config["warmup"], progress)
            done = sum(len(e["runs"]) for e in record["per_prompt"].values())
            progress.update(config["runs"] * len(prompts) - done)  # failed rows: skip their share
            results["methods"].append(record)
            for key in method.resources:
                if last_use[key] == index:
                    pool.release(key)
            _write_json(out, results, pool)
    pool.release_all()

    results["finished"] = datetime.now().isoformat(timespec="seconds")
    results["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    results["hardware"]["load_average_at_end"] = hardware.load_average()
    try:
        report.add_reference_outputs(results, pool.tokenizer())
    except Exception as error:  # decoding is informational
        logger.warning("could not decode the reference outputs: %s", error)
    report.summarize(results)
    _write_json(out, results, pool)
    report.write_markdown(results, out / "results.md")
    if not args.no_plots:
        report.plot_all(results, out)
    print(report.markdown_table(results))
    print(f"\nresults: {out}")
    return out


def _ir_dq_group_sizes(directories: dict) -> dict:
    """The dynamic-quantization group size each model's IR asks the runtime for (None: the plugin's default)."""
    import openvino as ov

    from optimum_dynexec.exporters.runtime_options import dq_group_size_of

    core, sizes = ov.Core(), {}
    for key, directory in directories.items():
        xml = Path(directory) / "openvino_model.xml"
        if xml.is_file():
            sizes[key] = dq_group_size_of(core.read_model(xml))
    return sizes


def _write_json(out: Path, results: dict, pool: ModelPool) -> None:
    results["models"] = {
        "directories": pool.directories(), "files": pool.fingerprints(), "load_seconds": pool.load_seconds,
        "compiled": pool.model_info, "dq_group_sizes": _ir_dq_group_sizes(pool.directories()),
    }
    results["calibrations"] = {
        key: {"seconds": pool.calibration_seconds.get(key), **{k: v for k, v in value.items() if k != "classifier"},
              "classifier": value.get("classifier")}
        for key, value in pool.calibrations.items()
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, out / "results.json")


if __name__ == "__main__":
    main()
