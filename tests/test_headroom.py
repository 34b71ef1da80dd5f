"""The lookahead headroom benchmark replays speculative steps from one greedy generation and one draft prefill:
the replay must record what the live speculative loop records (the same accepted counts and, for every token
the target judged, the same DISCO features)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.headroom import oracle_record, replay_steps
from optimum_dynexec.speculative.calibration import RecordingPolicy, labelled_examples
from optimum_dynexec.speculative.drafters import ModelDrafter
from optimum_dynexec.speculative.logits import TokenSelector
from optimum_dynexec.speculative.loop import speculative_generate


def test_replayed_steps_are_the_steps_the_live_loop_records(llama_speculative):
    model = llama_speculative
    model.calibration = None
    prompt = np.array([1, 57, 911, 23, 402, 7, 66], dtype=np.int64)
    max_new_tokens, lookahead = 40, 4

    target = model._runner(model)
    draft_runner, vocabulary = model._draft_runner(model.draft_model)
    recorder = RecordingPolicy(lookahead)
    # no eos: both sides run the full length
    live = speculative_generate(target, ModelDrafter(draft_runner, model.config.vocab_size, vocabulary), recorder,
                                prompt, TokenSelector(), max_new_tokens)

    record = oracle_record(model, prompt, max_new_tokens)
    assert np.array_equal(record["target"], live.tokens)  # greedy: the same tokens whichever lookahead made them
    replayed = replay_steps(record, lookahead)

    assert [s.accepted for s in replayed] == [s.accepted for s in recorder.steps]
    assert [s.proposed for s in replayed] == [s.proposed for s in recorder.steps]
    assert any(0 < s.accepted < s.proposed for s in replayed), "the tiny pair should disagree sometimes"
    features_live, labels_live = labelled_examples(recorder.steps)
    features_replayed, labels_replayed = labelled_examples(replayed)
    assert np.array_equal(labels_live, labels_replayed)
    # the same signals up to float noise: one prefill instead of one call per token
    np.testing.assert_allclose(features_replayed, features_live, rtol=1e-3, atol=1e-4)


def test_replay_stops_each_step_at_the_first_disagreement():
    from optimum_dynexec.speculative.signals import DraftSignal

    target = np.array([5, 6, 7, 8, 9, 10, 11])
    draft = np.array([5, 6, 0, 8, 0, 10, 11])
    signal = DraftSignal(0.9, 0.05, 0.3)
    steps = replay_steps({"target": target, "draft": draft, "signals": [signal] * len(target)}, max_lookahead=3)
    # step 1 drafts positions 0-2 and accepts 2 (position 2 is the target's correction); step 2 starts at 3:
    # 8 agrees, position 4 disagrees; step 3 starts at 5 and may only draft position 5 (6 is the last token)
    assert [(s.proposed, s.accepted) for s in steps] == [(3, 2), (3, 1), (1, 1)]


def _separable_steps(count: int, seed: int, lookahead: int = 8) -> list:
    """Steps whose draft signal tells acceptance apart: confident where the target agrees, unsure where not."""
    from optimum_dynexec.speculative.calibration import RecordedStep
    from optimum_dynexec.speculative.disco import FeatureTracker
    from optimum_dynexec.speculative.signals import DraftSignal

    rng = np.random.default_rng(seed)
    tracker, steps = FeatureTracker(), []
    for _ in range(count):
        accepted = int(min(rng.geometric(0.3) - 1, lookahead))
        tracker.start_step()
        signals = [DraftSignal(0.95, 0.03, 0.2) if j < accepted else DraftSignal(0.3, 0.25, 2.5)
                   for j in range(lookahead)]
        steps.append(RecordedStep(np.asarray([tracker.features(j, s) for j, s in enumerate(signals)]), accepted))
        tracker.observe(lookahead, accepted)
    return steps


def test_headroom_splits_what_disco_leaves_between_its_classifier_and_the_padding():
    from benchmarks.headroom import simulate_policies
    from optimum_dynexec.speculative.cost import LatencyModel

    # verification cost rises with width: padding a call to a wider compiled width costs something
    latencies = LatencyModel(0.012, [0.050 + 0.004 * n for n in range(12)])
    rates = simulate_policies(_separable_steps(400, 0), _separable_steps(150, 1), latencies, max_lookahead=8,
                              max_widths=2)["tokens_per_second"]

    best_static = max(value for name, value in rates.items() if name.startswith("static"))
    for name in ("disco", "disco, fit on these prompts", "disco, every width compiled"):
        assert best_static < rates[name] <= rates["oracle"], name
    # the same clear signal whoever fits it; only the two compiled widths' padding separates the rows from the
    # oracle's exact calls (and DISCO's one drafted token per step that the target rejects)
    assert rates["disco, fit on these prompts"] == pytest.approx(rates["disco"], rel=0.02)
    assert rates["disco, every width compiled"] > rates["disco"] * 1.01
