"""The benchmarked methods: each turns one prompt (token ids) into new tokens + wall seconds + statistics.

Models are shared: a :class:`ModelPool` loads each model / pipeline once, on first use, and the runner
releases it after the last method that needs it (the Qwen 1.5B int8 target is ~1.7 GB: never five copies).

Method types (the ``type`` of a preset's ``methods`` entries):

====================  ==================================================================================
``baseline``          optimum-intel ``OVModelForCausalLM.generate`` (upstream), greedy
``ours``              ``OVSpeculativeModelForCausalLM`` with a draft model: static ``k``, ``schedule:
                      heuristic`` (k = start value), ``schedule: disco | cost`` (k = cap; the pair is
                      calibrated first on the package's calibration prompts, never on the benchmark's)
                      or ``confidence: [thresholds]`` (k = cap); ``draft_lookup: [3, 0]`` adds rows whose
                      draft checks that many n-gram guesses per call (``/guess=0``: none);
                      ``draft_after_first_token: [false, true]`` adds rows whose first token comes from the
                      target's prefill alone (``/target-first``)
``ours-target-only``  the target alone in our loop (no draft): what the "cost" schedule falls back to
``ours-lookup``       ours with n-gram prompt lookup (``prompt_lookup_num_tokens=k``; ``schedule: cost``)
``hf-assisted``       transformers assisted generation with OpenVINO models (``assistant_model=draft``)
``genai``             ``openvino_genai.LLMPipeline`` plain greedy
``genai-spec``        GenAI speculative decoding with ``openvino_genai.draft_model``
``genai-lookup``      GenAI prompt lookup (``prompt_lookup=True``)
====================  ==================================================================================

GenAI pipelines run with prefix caching off. ``LLMPipeline`` turns it on by default on CPU (its latency-oriented
scheduler config), and the benchmark sends each prompt several times (warm-up, runs): every timed GenAI call
would reuse the first call's KV blocks and skip its prefill, which ours and optimum-intel compute every time.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from optimum_dynexec.configuration import SpeculationConfig

logger = logging.getLogger(__name__)

#: ours: n-gram guesses the draft model checks per call by default (``draft_lookup: 0`` rows turn them off)
DEFAULT_DRAFT_LOOKUP = SpeculationConfig.draft_lookup_num_tokens

METHOD_TYPES = ("baseline", "ours-target-only", "ours", "ours-lookup", "hf-assisted", "genai", "genai-spec", "genai-lookup")
#: the order models are loaded in: everything on the optimum target first, then one GenAI pipeline at a time
_TYPE_ORDER = {name: i for i, name in enumerate(METHOD_TYPES)}


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Generation:
    """One ``generate`` call: the new tokens (eos included when emitted), wall seconds, statistics."""

    tokens: list[int]
    seconds: float
    stats: Optional[dict] = None  # speculative statistics (ours: SpeculationStats.to_dict(); GenAI: its SD metrics)
    #: seconds from the first new tokens to the end, and the tokens that came in them (None: not measured)
    decode_seconds: Optional[float] = None
    decode_tokens: Optional[int] = None

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> Optional[float]:
        """Tokens/s after the first new tokens: the rate speculation changes (every row prefills the same prompt
        on the same target; openvino.genai reports its inverse as TPOT)."""
        if self.decode_seconds is None or self.decode_seconds <= 0 or not self.decode_tokens:
            return None
        return self.decode_tokens / self.decode_seconds

    @property
    def first_tokens_seconds(self) -> Optional[float]:
        """Time to the first new tokens (TTFT)."""
        return None if self.decode_seconds is None else self.seconds - self.decode_seconds


class _FirstTokensClock:
    """A transformers streamer noting when ``generate`` streams its first new tokens (it streams the prompt
    first)."""

    def __init__(self) -> None:
        self.puts = 0
        self.time: Optional[float] = None
        self.tokens = 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.time, self.tokens = time.perf_counter(), int(value.numel())

    def end(self) -> None:
        pass

    def generation(self, tokens: list[int], start: float, end: float) -> "Generation":
        if self.time is None:
            return Generation(tokens, end - start)
        return Generation(tokens, end - start, decode_seconds=end - self.time, decode_tokens=len(tokens) - self.tokens)


def _from_loop_stats(tokens: list[int], seconds: float, stats: dict) -> Generation:
    """A generation of our loop, its decode part read from its statistics."""
    return Generation(tokens, seconds, stats, decode_seconds=stats["seconds_total"] - stats["seconds_to_first_tokens"],
                      decode_tokens=stats["new_tokens"] - stats["first_tokens"])


@dataclass
class Method:
    """One row of the benchmark."""

    id: str  # unique, stable: used by --methods and as the row name
    type: str
    draft: Optional[str] = None  # draft id in the preset's ``drafts``
    k: Optional[int] = None
    schedule: str = "constant"
    confidence: Optional[float] = None
    max_ngram_size: Optional[int] = None
    kv_cache: str = "paged"  # ours: the KV-cache layout of the loop ("paged", the CPU default | "stateful")
    optimize_draft: bool = True  # ours: pruned LM head + tuned runtime properties for the draft model
    draft_lookup: int = DEFAULT_DRAFT_LOOKUP  # ours: n-gram guesses the draft model checks per call (0: off)
    draft_after_first_token: bool = False  # ours: the target's prefill emits the first token alone
    resources: list[str] = field(default_factory=list)  # ModelPool keys it needs

    @property
    def family(self) -> str:
        return {"baseline": "optimum-intel", "hf-assisted": "transformers"}.get(
            self.type, "ours" if self.type.startswith("ours") else "genai"
        )

    @property
    def policy(self) -> str:
        """The lookahead, for tables: ``k=4``, ``heuristic (k0=4)``, ``conf=0.4 (k<=10)``."""
        if self.type in ("baseline", "genai", "hf-assisted"):
            return "-"
        if self.type == "ours-target-only":
            return "k=0"
        if self.confidence is not None:
            return f"conf={self.confidence:g}" + (f" (k<={self.k})" if self.k else "")
        if self.schedule == "heuristic":
            return f"heuristic (k0={self.k})"
        if self.schedule in ("disco", "cost"):
            return f"{self.schedule} (k<={self.k})" + (f", ngram<={self.max_ngram_size}" if self.max_ngram_size else "")
        text = f"k={self.k}"
        if self.max_ngram_size is not None:
            text += f", ngram<={self.max_ngram_size}"
        return text

    @property
    def is_speculative(self) -> bool:
        return self.type in ("ours", "ours-lookup", "genai-spec", "genai-lookup")

    def describe(self) -> dict:
        return {
            "id": self.id, "type": self.type, "family": self.family, "draft": self.draft, "k": self.k,
            "schedule": self.schedule, "confidence": self.confidence, "max_ngram_size": self.max_ngram_size,
            "policy": self.policy, "kv_cache": self.kv_cache if self.family == "ours" else None,
            "optimize_draft": self.optimize_draft if self.type == "ours" else None,
            "draft_lookup": self.draft_lookup if self.type == "ours" else None,
            "draft_after_first_token": self.draft_after_first_token if self.type == "ours" else None,
        }


def _as_list(value) -> list:
    if value is None:
        return [None]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_methods(entries: list[dict], drafts: dict[str, dict]) -> list[Method]:
    """Preset ``methods`` entries (lists of k / thresholds allowed) -> one :class:`Method` per row, in run order."""
    methods: list[Method] = []
    for entry in entries:
        entry = dict(entry)
        layouts = _as_list(entry.pop("kv_cache", "paged"))
        unknown = [layout for layout in layouts if layout not in ("paged", "stateful")]
        if unknown:
            raise ValueError(f"method {entry.get('type')}: unknown kv_cache {unknown[0]!r} (paged, stateful)")
        optimized = [bool(value) for value in _as_list(entry.pop("optimize_draft", True))]
        guesses = [DEFAULT_DRAFT_LOOKUP if value is None else int(value)
                   for value in _as_list(entry.pop("draft_lookup", None))]
        target_first = [bool(value) for value in _as_list(entry.pop("draft_after_first_token", False))]
        if (layouts != ["paged"] or optimized != [True] or guesses != [DEFAULT_DRAFT_LOOKUP]) and not str(
                entry.get("type", "")).startswith("ours"):
            raise ValueError(f"method {entry.get('type')}: kv_cache / optimize_draft / draft_lookup apply to ours only")
        if target_first != [False] and entry.get("type") != "ours":
            raise ValueError(f"method {entry.get('type')}: draft_after_first_token applies to ours with a draft model only")
        for method in _expand_entry(entry, drafts):
            for layout, optimize, guess, first in itertools.product(layouts, optimized, guesses, target_first):
                suffix = (("" if layout == "paged" else f"/{layout}") + ("" if optimize else "/draft-as-loaded")
                          + ("" if guess == DEFAULT_DRAFT_LOOKUP else f"/guess={guess}")
                          + ("/target-first" if first else ""))
                methods.append(replace(method, id=method.id + suffix, kv_cache=layout, optimize_draft=optimize,
                                       draft_lookup=guess, draft_after_first_token=first))
    ids = [m.id for m in methods]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate methods in the preset: {duplicates}")
    return methods


def _expand_entry(entry: dict, drafts: dict[str, dict]) -> list[Method]:
    """One preset ``methods`` entry -> its rows (without the kv_cache variants)."""
    entry = dict(entry)
    methods: list[Method] = []
    kind = entry.pop("type", None)
    if kind not in METHOD_TYPES:
        raise ValueError(f"unknown method type {kind!r} in {entry}; known: {', '.join(METHOD_TYPES)}")
    draft = entry.pop("draft", None)
    if kind in ("ours", "genai-spec", "hf-assisted"):
        if draft is None:
            raise ValueError(f"method {kind} needs `draft:` (one of {sorted(drafts)})")
        if draft not in drafts:
            raise ValueError(f"method {kind}: unknown draft {draft!r}; the preset defines {sorted(drafts)}")
    ks = _as_list(entry.pop("k", None))
    confidences = _as_list(entry.pop("confidence", None))
    schedules = _as_list(entry.pop("schedule", "constant"))
    ngram = entry.pop("max_ngram_size", None)
    if entry:
        raise ValueError(f"method {kind}: unknown option(s) {sorted(entry)}")
    if kind in ("baseline", "genai"):
        methods.append(Method(kind, kind))
        return methods
    if kind == "ours-target-only":
        methods.append(Method("ours/target-only", kind))
        return methods
    if kind == "hf-assisted":
        methods.append(Method(f"hf-assisted/{draft}", kind, draft=draft))
        return methods
    if kind in ("ours-lookup", "genai-lookup"):
        ngram = ngram or 3
        for schedule in schedules:
            if schedule not in ("constant", "cost") or (schedule == "cost" and kind == "genai-lookup"):
                raise ValueError(f"method {kind}: schedule {schedule!r} is not available for prompt lookup")
            prefix = f"{kind}/cost" if schedule == "cost" else kind
            for k in ks:
                methods.append(Method(f"{prefix}/k={k}", kind, k=int(k or 5), max_ngram_size=int(ngram),
                                      schedule=schedule))
        return methods
    # ours / genai-spec with a draft model
    for confidence in confidences:
        if confidence is not None:
            cap = ks[0]
            if kind == "genai-spec":
                cap = None  # GenAI drafts until the confidence drops (num_assistant_tokens must be 0)
            else:
                cap = int(cap or 10)
            methods.append(Method(f"{kind}/{draft}/conf={confidence:g}", kind, draft=draft, k=cap,
                                  confidence=float(confidence)))
            continue
        dynamic = [schedule for schedule in schedules if schedule != "constant"]
        if dynamic and kind == "genai-spec":
            raise ValueError(f"GenAI speculative decoding has no {dynamic[0]!r} schedule")
        for schedule in dynamic:
            if schedule not in ("heuristic", "disco", "cost"):
                raise ValueError(f"method {kind}/{draft}: unknown schedule {schedule!r}")
            k = int(ks[0] or (4 if schedule == "heuristic" else 10))
            methods.append(Method(f"{kind}/{draft}/{schedule}", kind, draft=draft, k=k, schedule=schedule))
        if dynamic:
            continue
        for k in ks:
            if k is None:
                raise ValueError(f"method {kind}/{draft}: give `k:` (a number or a list), `schedule:` or `confidence:`")
            methods.append(Method(f"{kind}/{draft}/k={k}", kind, draft=draft, k=int(k)))
    return methods


def assign_resources(methods: list[Method], drafts: dict[str, dict]) -> None:
    """Fill each method's ``resources`` (the ModelPool keys it needs)."""
    for m in methods:
        draft_kind = drafts.get(m.draft, {}).get("kind", "model") if m.draft else None
        if m.type in ("baseline", "ours-lookup", "ours-target-only"):
            m.resources = ["optimum:target"]
        elif m.type in ("ours", "hf-assisted"):
            if draft_kind == "int4-self":
                # the user path: from_pretrained(target, draft="int4-self") makes its own target + INT4 copy
                m.resources = [f"optimum:int4-self:{m.draft}"]
            else:
                m.resources = ["optimum:target", f"optimum:draft:{m.draft}"]
        elif m.type == "genai":
            m.resources = ["genai:plain"]
        elif m.type == "genai-spec":
            m.resources = [f"genai:spec:{m.draft}"]
        elif m.type == "genai-lookup":
            m.resources = ["genai:lookup"]


def order_methods(methods: list[Method]) -> list[Method]:
    """Run order: baseline first (the reference), then by model group so each model is loaded once."""
    first_index = {}
    for i, m in enumerate(methods):
        first_index.setdefault(m.resources[0], i)
    return sorted(
        methods,
        key=lambda m: (m.type != "baseline", m.type.startswith("genai"), first_index[m.resources[0]],
                       _TYPE_ORDER[m.type], methods.index(m)),
    )


#: rows measured in every group: each group's ratios are taken against the anchors measured in that group
ANCHOR_TYPES = ("baseline", "genai")


def memory_groups(methods: list[Method]) -> list[tuple[str, list[Method]]]:
    """Split the rows into groups that each hold only their own models in memory, in run order.

    A group is one draft's rows (ours, GenAI speculative, transformers assisted) or the prompt-lookup rows; rows
    without a draft of their own (our target alone) join the first group. The anchors (optimum-intel baseline,
    GenAI plain) run in every group, so every ratio compares methods that took turns on the same prompts. The
    full Qwen preset in one group held ~28 GB resident on a 23.5 GB machine and pushed weight pages out.
    """
    anchors = [m for m in methods if m.type in ANCHOR_TYPES]
    named: dict[str, list[Method]] = {}
    loose: list[Method] = []
    for m in methods:
        if m.type in ANCHOR_TYPES:
            continue
        if m.draft is not None:
            named.setdefault(m.draft, []).append(m)
        elif m.type in ("ours-lookup", "genai-lookup"):
            named.setdefault("lookup", []).append(m)
        else:
            loose.append(m)
    groups = list(named.items()) or [("all", [])]
    groups[0] = (groups[0][0], loose + groups[0][1])
    return [(name, anchors + rows) for name, rows in groups]


# ------------------------------------------------------------------------------------------ the pool


def resolve_model_dir(entry: dict) -> Path:
    """A preset model entry -> an OpenVINO IR directory (``offline:`` converts it on first use)."""
    if "path" in entry:
        path = Path(entry["path"]).expanduser()
        if not (path / "openvino_model.xml").exists():
            raise FileNotFoundError(f"{path} has no openvino_model.xml")
        return path
    if "offline" in entry:
        from optimum_dynexec import offline

        return offline.get_model_path(entry["offline"], entry.get("format"))
    raise ValueError(f"a model entry needs `offline:` (+ `format:`) or `path:`, got {entry}")


def decision_seconds(vocab_size: int, calibration: dict, repeats: int = 200) -> float:
    """Seconds a dynamic policy adds per draft token: the draft signal over the vocabulary + the classifier."""
    from optimum_dynexec.speculative.disco import DiscoPolicy
    from optimum_dynexec.speculative.signals import greedy_signal

    logits = np.random.default_rng(0).normal(size=vocab_size).astype(np.float32) * 4
    policy = DiscoPolicy.from_calibration(calibration)
    policy.lookahead()
    start = time.perf_counter()
    for i in range(repeats):
        token = int(logits.argmax())
        policy.keep_drafting(i % 8, greedy_signal(logits, token))
        if i % 8 == 7:
            policy.lookahead()
    return (time.perf_counter() - start) / repeats


class ModelPool:
    """Loads models and pipelines on first use; ``release`` frees them (the runner calls it after the last user)."""

    def __init__(self, target: dict, drafts: dict[str, dict], ov_config: dict, device: str = "CPU"):
        self.target_entry = target
        self.drafts = drafts
        self.ov_config = dict(ov_config)
        self.device = device
        self._objects: dict[str, Any] = {}
        self._dirs: dict[str, Path] = {}
        self.load_seconds: dict[str, float] = {}
        self.model_info: dict[str, dict] = {}
        #: calibration of each draft's pair (DISCO classifier, threshold, latencies), made once per run
        self.calibrations: dict[str, dict] = {}
        self.calibration_seconds: dict[str, float] = {}

    # directories -------------------------------------------------------------------------------------

    def target_dir(self) -> Path:
        if "target" not in self._dirs:
            self._dirs["target"] = resolve_model_dir(self.target_entry)
        return self._dirs["target"]

    def draft_dir(self, draft: str, for_genai: bool = False) -> Path:
        entry = self.drafts[draft]
        key = f"draft:{draft}:{'genai' if for_genai else 'optimum'}"
        if key not in self._dirs:
            if entry.get("kind") == "int4-self":
                if not for_genai:
                    raise ValueError("an int4-self draft has no directory for optimum (it is made at load time)")
                if "genai" not in entry:
                    raise ValueError(f"draft {draft!r} (int4-self) needs `genai:` (an INT4 export) for GenAI methods")
                self._dirs[key] = resolve_model_dir(entry["genai"])
            else:
                self._dirs[key] = resolve_model_dir(entry)
        return self._dirs[key]

    def prepare(self, methods: list["Method"]) -> None:
        """Resolve the directories ``methods`` need (offline models are converted/exported here, untimed)."""
        self.target_dir()
        for m in methods:
            if m.draft is None:
                continue
            if m.type == "genai-spec":
                self.draft_dir(m.draft, for_genai=True)
            elif self.drafts[m.draft].get("kind") != "int4-self":
                self.draft_dir(m.draft)

    def directories(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._dirs.items()}

    def fingerprints(self) -> dict[str, dict]:
        """Size and mtime of each directory's weights, and the offline cache manifest when there is one: a
        rebuilt cache entry (new export settings) is visible in the results."""
        prints = {}
        for key, path in self._dirs.items():
            entry: dict[str, Any] = {}
            weights = path / "openvino_model.bin"
            if weights.exists():
                stat = weights.stat()
                entry["weights_bytes"] = stat.st_size
                entry["weights_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stat.st_mtime))
            for manifest in ("dynexec_offline.json", "dynexec_config.json"):
                if (path / manifest).exists():
                    try:
                        entry[manifest] = json.loads((path / manifest).read_text())
                    except ValueError:
                        entry[manifest] = "unreadable"
            prints[key] = entry
        return prints

    # objects -----------------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        if key not in self._objects:
            start = time.perf_counter()
            self._objects[key] = self._load(key)
            self.load_seconds[key] = round(time.perf_counter() - start, 2)
            logger.info("loaded %s in %.1f s", key, self.load_seconds[key])
        return self._objects[key]

    def calibration(self, draft: str, model, max_lookahead: int) -> dict:
        """The calibration of ``model`` with draft ``draft`` attached (calibrated on first use, on the
        package's own calibration prompts: the benchmark prompts stay held out)."""
        key = f"{draft}:k<={max_lookahead}"
        if key not in self.calibrations:
            from optimum_dynexec.calibration import calibrate_model

            start = time.perf_counter()
            logger.info("calibrating the %s pair (DISCO classifier, latencies)", draft)
            calibration, _ = calibrate_model(model, self.tokenizer(), max_lookahead=max_lookahead)
            self.calibration_seconds[key] = round(time.perf_counter() - start, 1)
            calibration["decision_seconds"] = decision_seconds(model.config.vocab_size, calibration)
            self.calibrations[key] = calibration
        return self.calibrations[key]

    def release(self, key: str) -> None:
        if self._objects.pop(key, None) is not None:
            gc.collect()

    def release_all(self) -> None:
        for key in list(self._objects):
            self.release(key)

    def tokenizer(self):
        """The target's transformers tokenizer (kept for the whole run: it is small)."""
        if getattr(self, "_tokenizer", None) is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.target_dir())
        return self._tokenizer

    def _load(self, key: str) -> Any:
        kind, _, rest = key.partition(":")
        if kind == "optimum":
            what, _, draft = rest.partition(":")
            if what == "target":
                from optimum_dynexec import OVSpeculativeModelForCausalLM

                model = OVSpeculativeModelForCausalLM.from_pretrained(
                    self.target_dir(), ov_config=dict(self.ov_config), device=self.device
                )
                self._record_compiled(key, model)
                return model
            if what == "draft":
                from optimum.intel import OVModelForCausalLM

                model = OVModelForCausalLM.from_pretrained(
                    self.draft_dir(draft), ov_config=dict(self.ov_config), device=self.device
                )
                self._record_compiled(key, model)
                return model
            if what == "int4-self":
                import optimum_dynexec  # noqa: F401  (registers the draft= flag)
                from optimum.intel import OVModelForCausalLM

                model = OVModelForCausalLM.from_pretrained(
                    self.target_dir(), ov_config=dict(self.ov_config), device=self.device, draft="int4-self"
                )
                self._record_compiled(key, model)
                self._record_compiled(key + ":draft", model.draft_model)
                return model
        if kind == "genai":
            import openvino_genai

            what, _, draft = rest.partition(":")
            props = dict(self.ov_config, scheduler_config=_genai_scheduler_config(openvino_genai))
            if what == "plain":
                return openvino_genai.LLMPipeline(str(self.target_dir()), self.device, **props)
            if what == "spec":
                draft_model = openvino_genai.draft_model(str(self.draft_dir(draft, for_genai=True)), self.device, **props)
                return openvino_genai.LLMPipeline(str(self.target_dir()), self.device, draft_model=draft_model, **props)
            if what == "lookup":
                return openvino_genai.LLMPipeline(str(self.target_dir()), self.device, prompt_lookup=True, **props)
        raise KeyError(f"unknown model pool key {key!r}")

    def _record_compiled(self, key: str, model) -> None:
        from .hardware import compiled_model_properties

        try:
            model.compile()
            compiled = model.request.get_compiled_model()
            self.model_info[key] = {
                "dir": str(getattr(model, "model_save_dir", "") or ""),
                "ov_config": dict(getattr(model, "ov_config", {}) or {}),
                "compiled_properties": compiled_model_properties(compiled),
            }
        except Exception as error:  # informational only
            self.model_info[key] = {"error": repr(error)}


# ------------------------------------------------------------------------------------------- runners


def _genai_scheduler_config(openvino_genai):
    """GenAI's own latency-oriented scheduler settings (no limit on the tokens of a step), prefix caching off (see
    the module docstring: repeated benchmark prompts must not skip their prefill)."""
    config = openvino_genai.SchedulerConfig()
    config.max_num_batched_tokens = 2**63 - 1
    config.enable_prefix_caching = False
    return config


class MethodFailed(RuntimeError):
    """The method does not run (as shipped): the row keeps the error string, status ``fails``."""


def _torch_inputs(prompt_ids: np.ndarray):
    import torch

    ids = torch.from_numpy(prompt_ids.reshape(1, -1).astype(np.int64))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _new_tokens(output, prompt_length: int) -> list[int]:
    sequences = output.sequences if hasattr(output, "sequences") else output
    return [int(t) for t in sequences[0, prompt_length:].tolist()]


def make_runner(method: Method, pool: ModelPool, max_new_tokens: int) -> Callable[[np.ndarray], Generation]:
    """A function prompt_ids -> :class:`Generation` for ``method`` (models come from ``pool``)."""
    if method.type == "baseline":
        return _optimum_baseline(pool.get("optimum:target"), max_new_tokens)
    if method.type in ("ours", "ours-lookup"):
        return _ours(method, pool, max_new_tokens)
    if method.type == "ours-target-only":
        return _ours_target_only(pool.get("optimum:target"), max_new_tokens, method.kv_cache)
    if method.type == "hf-assisted":
        return _hf_assisted(method, pool, max_new_tokens)
    if method.type == "genai":
        return _genai(pool.get("genai:plain"), max_new_tokens, {})
    if method.type == "genai-spec":
        options = (
            {"num_assistant_tokens": 0, "assistant_confidence_threshold": method.confidence}
            if method.confidence is not None
            else {"num_assistant_tokens": method.k}
        )
        return _genai(pool.get(f"genai:spec:{method.draft}"), max_new_tokens, options)
    if method.type == "genai-lookup":
        options = {"num_assistant_tokens": method.k, "max_ngram_size": method.max_ngram_size}
        return _genai(pool.get("genai:lookup"), max_new_tokens, options)
    raise ValueError(method.type)


def _optimum_baseline(model, max_new_tokens: int):
    from optimum.intel import OVModelForCausalLM

    def run(prompt_ids: np.ndarray) -> Generation:
        inputs = _torch_inputs(prompt_ids)
        clock = _FirstTokensClock()
        start = time.perf_counter()
        # optimum-intel's own generate (upstream), on the same compiled target ours uses: the model object is an
        # OVSpeculativeModelForCausalLM only so that the target is loaded once
        output = OVModelForCausalLM.generate(model, **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                             streamer=clock)
        return clock.generation(_new_tokens(output, prompt_ids.size), start, time.perf_counter())

    return run


def _ours_generate_kwargs(method: Method) -> dict:
    if method.type == "ours-lookup":
        return {"prompt_lookup_num_tokens": method.k, "max_matching_ngram_size": method.max_ngram_size,
                "num_assistant_tokens_schedule": method.schedule}
    common = {"draft_lookup_num_tokens": method.draft_lookup, "draft_after_first_token": method.draft_after_first_token}
    if method.schedule in ("disco", "cost"):
        return {"num_assistant_tokens_schedule": method.schedule, "max_assistant_tokens": method.k, **common}
    kwargs: dict[str, Any] = {"num_assistant_tokens": method.k, "num_assistant_tokens_schedule": method.schedule,
                              **common}
    if method.confidence is not None:
        kwargs["assistant_confidence_threshold"] = method.confidence
    return kwargs


def _ours(method: Method, pool: ModelPool, max_new_tokens: int):
    if method.resources[0].startswith("optimum:int4-self"):
        model = pool.get(method.resources[0])  # carries its own INT4 draft
        draft = None
    else:
        model = pool.get("optimum:target")
        draft = pool.get(f"optimum:draft:{method.draft}") if method.type == "ours" else None
    kwargs = _ours_generate_kwargs(method)
    calibrated = method.type == "ours" and method.schedule in ("disco", "cost")

    def run(prompt_ids: np.ndarray) -> Generation:
        # outside the timed region: attaching checks the tokenizers; calibration runs once per draft
        if draft is not None and model.draft_model is not draft:
            model.attach_draft(draft, kind="model")
        model.kv_cache = method.kv_cache
        model.optimize_draft = method.optimize_draft
        model.calibration = pool.calibration(method.draft, model, method.k) if calibrated else None
        inputs = _torch_inputs(prompt_ids)
        model.last_generation_stats = None
        start = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        seconds = time.perf_counter() - start
        stats = model.last_generation_stats
        if stats is None:
            raise MethodFailed(
                f"{method.id}: generate ran the target alone (last_generation_stats is None): no speculation happened"
            )
        summary = stats.to_dict()
        summary["seconds_wall"] = seconds
        return _from_loop_stats(_new_tokens(output, prompt_ids.size), seconds, summary)

    return run


def _ours_target_only(model, max_new_tokens: int, kv_cache: str = "paged"):
    """Our loop with a policy that never drafts: the reference the "cost" schedule must not fall below."""
    from optimum_dynexec.speculative import LookaheadPolicy, PromptLookupDrafter, TokenSelector, speculative_generate

    class NeverDraft(LookaheadPolicy):
        name = "never"

        def lookahead(self) -> int:
            return 0

    eos = model.generation_config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def run(prompt_ids: np.ndarray) -> Generation:
        model.kv_cache = kv_cache
        target = model._runner(model)
        if hasattr(target, "input_widths"):  # the runner is shared with the speculative rows: no padding here
            target.input_widths = (1,)
        start = time.perf_counter()
        result = speculative_generate(target, PromptLookupDrafter(), NeverDraft(1), prompt_ids.astype(np.int64),
                                      TokenSelector(eos_token_ids=eos_ids), max_new_tokens, eos_token_ids=eos_ids)
        seconds = time.perf_counter() - start
        summary = result.stats.to_dict()
        summary["seconds_wall"] = seconds
        return _from_loop_stats([int(t) for t in result.tokens], seconds, summary)

    return run


def _hf_assisted(method: Method, pool: ModelPool, max_new_tokens: int):
    from optimum.intel import OVModelForCausalLM

    if method.resources[0].startswith("optimum:int4-self"):
        model = pool.get(method.resources[0])
        draft = model.draft_model
    else:
        model = pool.get("optimum:target")
        draft = pool.get(f"optimum:draft:{method.draft}")

    def run(prompt_ids: np.ndarray) -> Generation:
        inputs = _torch_inputs(prompt_ids)
        clock = _FirstTokensClock()
        start = time.perf_counter()
        try:
            # upstream optimum-intel generate -> transformers assisted generation with an OV draft
            output = OVModelForCausalLM.generate(
                model, **inputs, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=draft, streamer=clock
            )
        except Exception as error:
            raise MethodFailed(f"{type(error).__name__}: {error}") from error
        return clock.generation(_new_tokens(output, prompt_ids.size), start, time.perf_counter())

    return run


def _genai(pipeline, max_new_tokens: int, options: dict):
    import openvino as ov

    config = pipeline.get_generation_config()
    config.max_new_tokens = max_new_tokens
    config.do_sample = False
    for name, value in options.items():
        setattr(config, name, value)

    def run(prompt_ids: np.ndarray) -> Generation:
        tensor = ov.Tensor(np.ascontiguousarray(prompt_ids.reshape(1, -1), dtype=np.int64))
        start = time.perf_counter()
        result = pipeline.generate(tensor, config)
        seconds = time.perf_counter() - start
        tokens = [int(t) for t in result.tokens[0]]
        stats = _genai_stats(result, len(tokens), seconds)
        # GenAI's own clock: its first token at TTFT, the others in the rest of its generate
        return Generation(tokens, seconds, stats, decode_seconds=(stats["genai_generate_ms"] - stats["genai_ttft_ms"]) / 1e3,
                          decode_tokens=len(tokens) - 1)

    return run


def _genai_stats(result, new_tokens: int, seconds: float) -> dict:
    metrics = result.perf_metrics
    stats: dict[str, Any] = {
        "new_tokens": new_tokens,
        "seconds_wall": seconds,
        "genai_num_generated_tokens": int(metrics.get_num_generated_tokens()),
        "genai_generate_ms": float(metrics.get_generate_duration().mean),
        "genai_ttft_ms": float(metrics.get_ttft().mean),
        "genai_tpot_ms": float(metrics.get_tpot().mean),
    }
    extended = getattr(result, "extended_perf_metrics", None)
    if extended is not None and hasattr(extended, "get_num_accepted_tokens"):
        accepted = int(extended.get_num_accepted_tokens())
        proposed = int(extended.get_num_draft_tokens())
        # greedy: every target call emits its accepted drafts + one token of its own
        target_calls = max(1, new_tokens - accepted)
        stats.update({
            "draft_tokens_accepted": accepted,
            "draft_tokens_proposed": proposed,
            "acceptance_rate": float(extended.get_draft_acceptance_rate()),
            "target_calls": target_calls,
            "target_calls_derived": True,
            "mean_accepted_length": accepted / target_calls,
            "tokens_per_target_call": new_tokens / target_calls,
        })
    return stats
