"""The main job: speculative generation on the embedded default pair, against the target alone.

    python -m optimum_dynexec.demo                       # Qwen2.5-Coder 1.5B (int8) + 0.5B (int4) draft
    python -m optimum_dynexec.demo --preset smollm2      # SmolLM2-135M with its own INT4 copy as draft

Prints the generated text and a table: plain vs speculative tokens/s, speedup, mean accepted tokens per
target call, and whether the speculative output is identical to the target's own greedy output.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Optional

DEFAULT_PROMPT = "Write a Python function that checks whether a string is a palindrome, with a docstring and two doctests."


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-coder", help="embedded pair: qwen2.5-coder (default) or smollm2")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-assistant-tokens", type=int, default=None, help="draft lookahead (default: the model's)")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--exact-numerics", action="store_true",
                        help="run both in f32 (INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION, no dynamic quantization): "
                             "slower, and the speculative output is then the plain greedy output token for token")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the demo (see the module docstring)."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import optimum_dynexec  # noqa: F401  (registers draft_model= with optimum-intel)
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    from .offline import get_pair_paths

    paths = get_pair_paths(args.preset)
    tokenizer = AutoTokenizer.from_pretrained(paths.target)
    from .configuration import EXACT_OV_CONFIG

    ov_config = dict(EXACT_OV_CONFIG) if args.exact_numerics else None
    model = OVModelForCausalLM.from_pretrained(paths.target, draft_model=paths.draft, device=args.device,
                                               ov_config=ov_config)
    messages = [{"role": "user", "content": args.prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    common = dict(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    lookahead = {} if args.num_assistant_tokens is None else {"num_assistant_tokens": args.num_assistant_tokens}

    def plain():
        return OVModelForCausalLM.generate(model, **common)  # the target alone, upstream optimum-intel

    def speculative():
        return model.generate(**common, **lookahead)

    print("warming up...", flush=True)
    plain(), speculative()
    plain_out, plain_seconds = _timed(plain)
    spec_out, spec_seconds = _timed(speculative)
    stats = model.last_generation_stats

    prompt_length = inputs["input_ids"].shape[1]
    plain_tokens = plain_out[0, prompt_length:]
    spec_tokens = spec_out[0, prompt_length:]
    print("\n" + tokenizer.decode(spec_tokens, skip_special_tokens=True).strip() + "\n")
    plain_rate = len(plain_tokens) / plain_seconds
    spec_rate = len(spec_tokens) / spec_seconds
    identical = _agreement(plain_tokens.tolist(), spec_tokens.tolist())
    print(f"target {paths.target.name}, draft {paths.draft.name}, {args.max_new_tokens} new tokens, greedy\n")
    print("| method | tokens/s | speedup | accepted tokens / target call | identical to plain greedy |")
    print("|---|---:|---:|---:|---|")
    print(f"| target alone (OVModelForCausalLM) | {plain_rate:.1f} | 1.00x | - | - |")
    print(
        f"| speculative (draft {paths.draft.name}) | {spec_rate:.1f} | {spec_rate / plain_rate:.2f}x "
        f"| {stats.mean_accepted_length:.2f} | {identical} |"
    )
    print(f"\n{stats}")


def _agreement(plain: list[int], speculative: list[int]) -> str:
    """'yes', or where the two greedy outputs part (under bf16 CPU math a near-tie can flip: README, Exactness)."""
    if plain == speculative:
        return "yes"
    same = next((i for i, (a, b) in enumerate(zip(plain, speculative)) if a != b), min(len(plain), len(speculative)))
    return (f"no: the first {same} of {len(plain)} tokens (a near-tie under bf16 CPU math; "
            "--exact-numerics runs both in f32 and they match)")


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


if __name__ == "__main__":
    main()
