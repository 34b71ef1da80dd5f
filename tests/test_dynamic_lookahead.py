"""Dynamic lookahead: the DISCO classifier and the cost-aware policy, their calibration, and exactness.

Policy logic is checked on hand-made signals and latencies; calibration runs for real on a tiny exported
pair, and the calibrated policies must keep greedy output identical to the plain target's (F32 hints) and
the sampling distribution unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import F32, load_plain, load_speculative
from optimum_dynexec.configuration import CONFIG_VERSION
from optimum_dynexec.speculative.calibration import (
    RecordedStep,
    acceptance_curve,
    disco_lookahead,
    labelled_examples,
    simulate,
    train_classifier,
    tune_lookahead,
)
from optimum_dynexec.speculative.cost import (
    _CLEAR_LOSS,
    _EVIDENCE_STEPS,
    _MIN_REALIZED,
    _PROBE_STEPS,
    CostPolicy,
    LatencyModel,
    _RunningRate,
    measure_latencies,
)
from optimum_dynexec.speculative.disco import (
    FEATURES,
    AcceptanceClassifier,
    DiscoPolicy,
    FeatureTracker,
    stop_position,
)
from optimum_dynexec.speculative.policies import make_policy
from optimum_dynexec.speculative.signals import DraftSignal, greedy_signal, sampled_signal
from test_policies_and_drafters import ToyDecoder

CONFIDENT = DraftSignal(0.98, 0.01, 0.1)
UNSURE = DraftSignal(0.2, 0.18, 3.0)


# ---------------------------------------------------------------- signals


def test_greedy_signal_matches_the_softmax():
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32) * 3
    token = int(logits.argmax())
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    signal = greedy_signal(logits, token)
    assert signal.probability == pytest.approx(probs[token], rel=1e-5)
    assert signal.second == pytest.approx(np.sort(probs)[-2], rel=1e-5)
    assert signal.entropy == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-4)
    assert logits.argmax() == token  # the draft's logits were not modified
    sampled = sampled_signal(probs, 3)
    assert sampled.probability == pytest.approx(probs[3]) and sampled.second == pytest.approx(probs.max())


def test_greedy_signal_ignores_tokens_a_pruned_draft_cannot_propose():
    """A vocabulary-pruned draft scatters its row into the target's vocabulary with -inf elsewhere."""
    logits = np.random.default_rng(1).normal(size=300).astype(np.float32) * 3
    scattered = np.full(1000, -np.inf, dtype=np.float32)
    kept = np.sort(np.random.default_rng(2).choice(1000, 300, replace=False))
    scattered[kept] = logits
    token = int(logits.argmax())
    inner, outer = greedy_signal(logits, token), greedy_signal(scattered, int(kept[token]))
    assert np.isfinite([outer.probability, outer.second, outer.entropy]).all()
    assert outer.probability == pytest.approx(inner.probability, rel=1e-5)
    assert outer.second == pytest.approx(inner.second, rel=1e-5)
    assert outer.entropy == pytest.approx(inner.entropy, rel=1e-4)


# ---------------------------------------------------------------- DISCO


def synthetic_steps(count: int = 400, lookahead: int = 6, seed: int = 0) -> list[RecordedStep]:
    """Steps whose tokens are accepted with probability = their draft probability (a learnable signal)."""
    rng = np.random.default_rng(seed)
    steps = []
    tracker = FeatureTracker()
    for _ in range(count):
        tracker.start_step()
        probabilities = rng.beta(2, 1, size=lookahead)
        rows = [tracker.features(j, DraftSignal(p, (1 - p) / 2, 1.5 * (1 - p))) for j, p in enumerate(probabilities)]
        accepted = 0
        while accepted < lookahead and rng.random() < probabilities[accepted]:
            accepted += 1
        tracker.observe(lookahead, accepted)
        steps.append(RecordedStep(np.array(rows), accepted))
    return steps


def test_classifier_reproduces_scikit_learn_and_learns_the_signal():
    from sklearn.linear_model import LogisticRegression

    steps = synthetic_steps()
    classifier, quality = train_classifier(steps)
    x, y = labelled_examples(steps)
    assert set(np.unique(y)) == {0, 1} and x.shape[1] == len(FEATURES)
    mean, scale = np.array(classifier.mean), np.array(classifier.scale)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y)
    expected = reference.predict_proba((x[:50] - mean) / scale)[:, 1]
    assert np.allclose([classifier.predict(row) for row in x[:50]], expected, atol=1e-6)
    assert quality["held_out_auc"] > 0.7  # the draft probability predicts acceptance
    restored = AcceptanceClassifier.from_dict(json.loads(json.dumps(classifier.to_dict())))
    assert restored.predict(x[0]) == pytest.approx(classifier.predict(x[0]))


def test_classifier_refuses_single_class_data_and_bad_arrays():
    steps = [RecordedStep(np.ones((3, len(FEATURES))), 3)] * 10
    with pytest.raises(ValueError, match="every one of the .* was accepted"):
        train_classifier(steps)
    good = train_classifier(synthetic_steps(100))[0].to_dict()
    with pytest.raises(ValueError, match="incomplete"):
        AcceptanceClassifier.from_dict({k: v for k, v in good.items() if k != "bias"})
    with pytest.raises(ValueError, match="trained on features"):
        AcceptanceClassifier.from_dict({**good, "features": ["probability"] * len(FEATURES)})
    with pytest.raises(ValueError, match="non-finite"):
        AcceptanceClassifier.from_dict({**good, "weights": [float("nan")] * len(FEATURES)})
    with pytest.raises(ValueError, match="different lengths"):
        AcceptanceClassifier.from_dict({**good, "mean": [0.0]})


def test_disco_stops_at_the_first_token_below_the_threshold():
    classifier = train_classifier(synthetic_steps())[0]
    policy = DiscoPolicy(classifier, threshold=0.5, max_assistant_tokens=8)
    assert policy.lookahead() == 8
    assert policy.keep_drafting(0, CONFIDENT)
    assert not policy.keep_drafting(1, UNSURE)
    assert policy.predictions[0] > 0.5 > policy.predictions[1]
    assert policy.keep_drafting(0, None)  # no distribution (prompt lookup): keep the proposal


def steady_steps(count: int = 600, lookahead: int = 8, seed: int = 0) -> list[RecordedStep]:
    """Steps of one draft probability each, every token of a step accepted with that probability: no token looks
    worse than the ones before it, only the chance that the whole run survives falls as it grows."""
    rng = np.random.default_rng(seed)
    tracker = FeatureTracker()
    steps = []
    for _ in range(count):
        tracker.start_step()
        p = rng.uniform(0.5, 1.0)
        rows = [tracker.features(j, DraftSignal(p, (1 - p) / 2, 1.0 - p)) for j in range(lookahead)]
        accepted = 0
        while accepted < lookahead and rng.random() < p:
            accepted += 1
        tracker.observe(lookahead, accepted)
        steps.append(RecordedStep(np.array(rows), accepted))
    return steps


def test_prefix_rule_stops_when_the_whole_run_becomes_unlikely():
    # 0.9^3 = 0.729 >= 0.7 > 0.9^4: the fourth token is proposed, the fifth not
    assert stop_position([0.9] * 5, 0.7, "prefix") == 4
    assert stop_position([0.9] * 5, 0.7, "token") == 5  # no single token is below 0.7
    assert stop_position([0.9, 0.5, 0.9], 0.7, "token") == 2
    assert stop_position([], 0.7, "prefix") == 0
    classifier = train_classifier(synthetic_steps())[0]
    predictions = []
    for rule in ("token", "prefix"):
        policy = DiscoPolicy(classifier, threshold=0.6, max_assistant_tokens=10, stop_rule=rule)
        policy.lookahead()
        drafted = 0
        while drafted < 10:
            drafted += 1
            if not policy.keep_drafting(drafted - 1, CONFIDENT):
                break
        predictions.append(policy.predictions)
        # the live policy stops where the recorded-step simulation does
        assert drafted == stop_position(policy.predictions, 0.6, rule)
    assert len(predictions[1]) < len(predictions[0])  # confident tokens: only the product falls below 0.6
    with pytest.raises(ValueError, match="unknown DISCO stop rule"):
        DiscoPolicy(classifier, threshold=0.6, stop_rule="sometimes")


def test_calibration_prefers_the_prefix_rule_when_acceptance_does_not_vary_within_a_step():
    steps = steady_steps()
    classifier = train_classifier(steps)[0]
    latencies = LatencyModel(0.1, [1.0 + 0.05 * n for n in range(9)])
    threshold, stop_rule, widths, simulation = tune_lookahead(steps, classifier, latencies)
    assert stop_rule == "prefix"
    # the per-token rule can only draft one token or all of them; the prefix rule drafts longer the likelier
    # each token is
    assert simulation["rule_curve"]["prefix"] > 1.005 * simulation["rule_curve"]["token"]
    chosen = simulate(steps, lambda s: disco_lookahead(s, classifier, threshold, stop_rule), latencies)["chosen"]
    probability = np.array([s.features[0][0] for s in steps])
    assert len(set(chosen)) > 3
    assert np.corrcoef(probability, chosen)[0, 1] > 0.8


def test_disco_without_calibration_says_how_to_calibrate():
    with pytest.raises(ValueError, match="optimum-cli dynexec calibrate"):
        make_policy(5, "disco", calibration=None)
    with pytest.raises(ValueError, match="cannot be combined"):
        make_policy(5, "disco", 0.4)


def test_threshold_tuning_beats_static_lookahead_on_a_learnable_signal():
    steps = synthetic_steps()
    classifier = train_classifier(steps)[0]
    latencies = LatencyModel(0.2, [1.0 + 0.02 * n for n in range(8)])
    threshold, stop_rule, widths, simulation = tune_lookahead(steps, classifier, latencies)
    assert len(widths) == 1
    assert simulation["threshold_curve"][threshold] == max(simulation["threshold_curve"].values())
    assert simulation["threshold_curve"][threshold] == max(simulation["rule_curve"].values())
    assert simulation["threshold_curve"][threshold] > max(simulation["static"].values())
    assert simulation["oracle"] >= simulation["threshold_curve"][threshold]
    chosen = simulate(steps, lambda s: disco_lookahead(s, classifier, threshold, stop_rule), latencies)["chosen"]
    assert len(set(chosen)) > 2  # the lookahead really varies from step to step
    curve = acceptance_curve(steps)
    assert len(curve) == 6 and all(0 < value < 1 for value in curve)


def test_lookahead_tuning_prices_padded_verification_and_uses_a_second_width_when_it_pays():
    """Calls run padded to the chosen widths: with verification growing steeply in its size, one wide width
    makes every short step pay for the long ones, so a second width wins when the runtime allows it."""
    steps = synthetic_steps()
    classifier = train_classifier(steps)[0]
    steep = LatencyModel(0.05, [1.0 + 0.3 * n for n in range(7)])
    *_, single, one = tune_lookahead(steps, classifier, steep, max_widths=1)
    *_, pair, two = tune_lookahead(steps, classifier, steep, max_widths=2)
    *_, triple, three = tune_lookahead(steps, classifier, steep, max_widths=3)
    assert len(single) == 1 and len(pair) == 2 and len(triple) == 3
    assert max(two["threshold_curve"].values()) > max(one["threshold_curve"].values())
    # a third copy's width pays too when every extra verified token costs this much
    assert max(three["threshold_curve"].values()) > max(two["threshold_curve"].values())
    assert {len(key.split(",")) for key in three["widths_curve"]} == {1, 2, 3}
    # the simulation charges the padded width: a single width 7 costs every step verify(7)
    widths7 = steep.with_widths((7,))
    assert widths7.verify_time(2) == widths7.verify_time(7) == pytest.approx(2.8)
    assert one["widths_curve"]["7"] < max(one["widths_curve"].values())
    # static k is simulated at its own width k + 1
    assert set(one["static"]) == set(range(0, 7))


# ---------------------------------------------------------------- cost-aware


def test_cost_policy_does_not_draft_when_the_draft_does_not_pay_and_probes_rarely():
    expensive = LatencyModel(draft_step=0.9, verify=[1.0, 1.02, 1.04, 1.06, 1.08])
    policy = CostPolicy(expensive, max_assistant_tokens=4, initial_acceptance=0.6, probe_interval=4)
    now = [0.0]
    policy.clock = lambda: now[0]
    choices = []
    for _ in range(40):
        k = policy.lookahead()
        choices.append(k)
        now[0] += 0.9 * k + 1.0 + 0.02 * k
        policy.observe(k, 0)
        policy.observe_timing(0.9 * k, k, 1.0 + 0.02 * k, k + 1)
    assert choices.count(0) >= 40 - 3 * _PROBE_STEPS
    # a probe is a short run of drafting steps (the first one catches the draft up)
    probes = [i for i, k in enumerate(choices) if k and (i == 0 or not choices[i - 1])]
    assert all(len(run) <= _PROBE_STEPS for run in "".join("d" if k else " " for k in choices).split())
    assert len(probes) >= 2 and np.all(np.diff(probes) > 3) and np.diff(probes)[-1] > np.diff(probes)[0]  # backing off
    # the next sequence (the model keeps one cost policy across generate calls) does not start probing afresh
    policy.reset()
    later = []
    for _ in range(40):
        k = policy.lookahead()
        later.append(k)
        now[0] += 0.9 * k + 1.0 + 0.02 * k
        policy.observe(k, 0)
        policy.observe_timing(0.9 * k, k, 1.0 + 0.02 * k, k + 1)
    assert sum(1 for k in later if k) < sum(1 for k in choices if k)


def test_cost_policy_drafts_long_when_cheap_and_stops_on_doubt():
    cheap = LatencyModel(draft_step=0.1, verify=[1.0 + 0.01 * n for n in range(9)])
    policy = CostPolicy(cheap, max_assistant_tokens=8, initial_acceptance=0.9)
    assert policy.lookahead() == 8
    assert policy.keep_drafting(0, CONFIDENT) and policy.keep_drafting(1, CONFIDENT)
    assert not policy.keep_drafting(2, UNSURE)
    # a verification that costs more per token makes long lookaheads not worth it

    def drafted(verify_slope: float) -> int:
        policy = CostPolicy(LatencyModel(0.1, [1.0 + verify_slope * n for n in range(9)]), 8, initial_acceptance=0.9)
        assert policy.lookahead() == 8
        count = 1
        while count < 8 and policy.keep_drafting(count - 1, DraftSignal(0.9, 0.05, 0.4)):
            count += 1
        return count

    assert drafted(0.01) == 8
    assert 2 <= drafted(0.5) < 8
    assert CostPolicy(LatencyModel(0.1, [1.0 + n for n in range(9)]), 8, initial_acceptance=0.9).lookahead() == 0


def test_cost_policy_plans_with_the_acceptance_of_each_position_and_survives_a_rejection():
    """Qwen2.5-Coder with its 0.5B draft, paged (ms): a draft step 12, verifying 1 token 41, 2-6 tokens 54.
    The first draft token is accepted half the time, later ones 90% of the time given the ones before: a run
    pays although one token alone would not, and one rejected step must not switch the draft off."""
    latencies = LatencyModel(draft_step=0.012, verify=[0.041] + [0.054] * 5)
    policy = CostPolicy(latencies, max_assistant_tokens=5, initial_acceptance=0.9)
    for _ in range(30):  # what the policy has seen: first tokens accepted half the time, the rest 90%
        k = policy.lookahead()
        assert k == 5
        policy.observe(k, 0)
        k = policy.lookahead()
        policy.observe(k, 4)
    assert policy.position_acceptance[0] == pytest.approx(0.5, abs=0.1)
    assert policy.position_acceptance[1] > 0.85
    policy.observe(5, 0)  # one more rejection
    assert policy.lookahead() == 5
    # the same positions with an expensive draft: the target alone
    slow = CostPolicy(LatencyModel(draft_step=0.04, verify=[0.041] + [0.054] * 5), 5, initial_acceptance=0.9)
    slow.position_acceptance = list(policy.position_acceptance)
    assert slow.lookahead() == 0


def test_cost_policy_trusts_realized_rates_over_its_latency_model():
    """What the latency model leaves out (catch-up prefills, shape switches, the draft's Python) can make a draft
    that looks worth it lose: once drafting and target-only steps have both been seen, their realized tokens
    per second of wall time decide."""
    policy = CostPolicy(LatencyModel(draft_step=5.0, verify=[1.0] * 6), 5, initial_acceptance=0.9, probe_interval=4)
    now = [0.0]
    policy.clock = lambda: now[0]

    def steps(count: int) -> list[int]:
        choices = []
        for _ in range(count):  # drafting steps realize 2 tokens in 4 s of wall time, target-only ones 1 in 1 s
            k = policy.lookahead()
            choices.append(k)
            now[0] += 4.0 if k else 1.0
            policy.observe(k, min(k, 1))
            policy.observe_timing(0.5 if k else 0.0, k, 1.0, k + 1)  # what the runtimes alone took
        return choices

    steps(30)  # the model says no; probes draft
    assert policy._realized[True].steps >= 4 and policy._realized[False].steps >= 4
    policy.latencies.draft_step = 0.01  # now the model alone would draft every step
    assert policy._plan_pays()
    later = steps(10)
    assert later.count(0) >= 6  # at most a probe
    assert all(len(run) <= 3 for run in "".join("d" if k else " " for k in later).split())


def test_cost_policy_switches_modes_only_for_a_clear_difference():
    """Realized rates within a few percent of each other are timing noise, and switching costs what steady steps do
    not show (the draft's catch-up, new input shapes): the policy stays in the mode it is in."""
    policy = CostPolicy(LatencyModel(draft_step=0.01, verify=[0.015] * 6), 5, initial_acceptance=0.8,
                        probe_interval=1000)

    def realize(drafting: float, alone: float) -> None:
        for mode, rate in ((True, drafting), (False, alone)):
            policy._realized[mode] = _RunningRate()
            for _ in range(_EVIDENCE_STEPS):
                policy._realized[mode].add(rate * 0.03, 0.03)

    for drafting_mode in (True, False):
        policy._drafting = drafting_mode
        realize(drafting=70.0, alone=71.0)  # within the margin: stay
        assert (policy.lookahead() > 0) is drafting_mode
        policy._drafting = drafting_mode
        realize(drafting=80.0, alone=70.0)  # drafting clearly faster
        assert policy.lookahead() > 0
        policy._drafting = drafting_mode
        realize(drafting=60.0, alone=70.0)  # the target alone clearly faster
        assert policy.lookahead() == 0


def test_a_young_drafting_run_stops_only_on_a_clear_loss_and_a_proven_one_resets_the_back_off():
    """Tokens per drafting step swing with the text, so a probe's few steps cannot tell a draft that pays 10% from
    one that loses 10%: a run younger than _EVIDENCE_STEPS goes on unless it realizes under _CLEAR_LOSS times the
    target alone. Once drafting has proved itself, the probe interval starts over from its base."""
    policy = CostPolicy(LatencyModel(draft_step=0.1, verify=[1.0] * 6), 5, initial_acceptance=0.9, probe_interval=2)
    now = [0.0]
    policy.clock = lambda: now[0]
    for _ in range(6):
        policy._realized[False].add(1, 1.0)  # the target alone: 1 token a second
    policy._interval = 64  # backed off after earlier failed probes

    def step(tokens: int, seconds: float) -> int:
        k = policy.lookahead()
        now[0] += seconds
        policy.observe(k, tokens - 1 if k else 0)
        policy.observe_timing(0.1 * k, k, 0.9, k + 1)
        return k

    policy._probe_left, policy._drafting, policy._caught_up = 1, True, True
    policy._realized[True] = _RunningRate()
    # an unlucky start: 0.87 tokens/s, a loss beyond the switching margin but not a clear one
    choices = [step(1, 1.0), *[step(1, 1.15) for _ in range(6)]]
    assert policy._realized[True].steps < _EVIDENCE_STEPS
    assert _CLEAR_LOSS < policy._realized[True].value < 1.0 / 1.03
    assert all(choices)  # still drafting, young as it is
    while policy._realized[True].steps < _EVIDENCE_STEPS:
        assert step(2, 1.0)  # drafting now earns 2 tokens a second
    assert step(2, 1.0) and policy._interval == policy.probe_interval
    # a clear loss stops a young run at once
    policy._realized[True] = _RunningRate()
    for _ in range(_MIN_REALIZED):
        policy._realized[True].add(1, 2.0)
    assert policy.lookahead() == 0


def test_a_free_draft_is_judged_by_the_plan_not_by_blended_realized_rates():
    """Prompt lookup costs only its wider verification: a drafting step without a match is a one-token call like
    the target alone's, so realized rates blend both and cannot judge it. The plan (latencies per width and the
    acceptance seen) decides; with a draft model the same realized rates stop drafting."""
    for free, expected in ((True, 8), (False, 0)):
        policy = CostPolicy(LatencyModel(0.0 if free else 0.01, [1.0] * 9), 8, initial_acceptance=0.5)
        for mode, rate in ((True, 0.9), (False, 1.0)):  # drafting realized 10% below the target alone
            for _ in range(_EVIDENCE_STEPS):
                policy._realized[mode].add(rate, 1.0)
        assert policy.lookahead() == expected
    # proposals rarely accepted while a wide call costs much more than a narrow one: the plan stops
    costly = CostPolicy(LatencyModel(0.0, [1.0 + 0.2 * n for n in range(9)]), 8, initial_acceptance=0.05)
    assert costly.lookahead() == 0


def test_a_probe_measures_drafting_afresh():
    """Drafting judged slow long ago (a stale realized rate) is measured again by the next probe, whose steps
    replace the old rate: a draft that now pays is back to drafting after one probe."""
    policy = CostPolicy(LatencyModel(draft_step=0.9, verify=[1.0] * 6), 5, initial_acceptance=0.9, probe_interval=3)
    now = [0.0]
    policy.clock = lambda: now[0]
    for _ in range(5):  # drafting once realized 1 token in 5 s, the target alone 1 token a second
        policy._realized[True].add(1, 5.0)
        policy._realized[False].add(1, 1.0)
    choices = []
    for _ in range(20):
        k = policy.lookahead()
        choices.append(k)
        now[0] += 1.0  # every step takes 1 s; a drafting step now yields 3 tokens
        policy.observe(k, 2 if k else 0)
        policy.observe_timing(0.1 * k, k, 0.9, k + 1)
    first_probe = choices.index(next(k for k in choices if k))
    assert choices[:first_probe] == [0] * first_probe
    assert all(choices[first_probe:])  # drafting from the probe on


def test_one_stalled_step_barely_moves_a_running_rate():
    """A drafting step that stalls once (its first call compiling a graph: seconds instead of milliseconds)
    counts as a few slow steps, so the realized rate of drafting that pays stays above the target alone's."""
    rate = _RunningRate()
    for _ in range(10):
        rate.add(3, 0.09)  # drafting: 3 tokens in 90 ms, against the target alone's 1 token in 40 ms (25 tokens/s)
    steady = rate.value
    rate.add(3, 3.0)
    assert 0.7 * steady < rate.value < steady and rate.value > 25
    for _ in range(10):
        rate.add(3, 0.5)  # the machine really slowed down: the rate follows
    assert rate.value < 0.25 * steady


def test_a_slow_first_step_does_not_set_a_running_rate():
    """The first drafting step of a policy often runs a compiled copy's first inference (0.35 s against 30 ms on
    SmolLM2): among the first steps, the slowest is left out, so the rate starts where drafting really is."""
    rate = _RunningRate()
    rate.add(6, 0.35)
    assert rate.value == pytest.approx(6 / 0.35)
    for _ in range(3):
        rate.add(2, 0.03)
    assert rate.steps == 4 and rate.value == pytest.approx(2 / 0.03)
    rate.add(2, 0.03)  # from here on an exponential average
    assert rate.value == pytest.approx(2 / 0.03)
    steady = _RunningRate()
    for seconds in (0.03, 0.04, 0.05):  # no outlier: the slowest of three still goes, the rate stays near
        steady.add(2, seconds)
    assert steady.value == pytest.approx(2 / 0.035)


def test_latency_model_refuses_nonsense_and_extrapolates():
    with pytest.raises(ValueError, match="positive seconds"):
        LatencyModel(0.1, [])
    with pytest.raises(ValueError, match="positive seconds"):
        LatencyModel(0.1, [1.0, -1.0])
    model = LatencyModel(0.1, [1.0, 1.5, 2.0])
    assert model.verify_time(5) == pytest.approx(3.0)
    assert LatencyModel.from_dict(model.to_dict()).verify == model.verify
    padded = model.with_widths((3, 1))
    assert padded.widths == (1, 3) and padded.verify_time(2) == pytest.approx(2.0) and padded.verify_time(1) == 1.0
    assert padded.verify_time(4) == pytest.approx(2.5)  # beyond the widths: its own size


def test_latency_model_follows_each_widths_own_cost_in_the_loop():
    """A width that costs more in the loop than measured alone (SmolLM2: width-9 calls alternating with width-1
    calls on one compiled model) corrects its own entry; one width seen alone rescales the whole table."""
    table = [1.0 + 0.02 * n for n in range(9)]
    model = LatencyModel(0.0, table).with_widths((1, 9))
    for _ in range(100):
        model.update(0.0, 0, 1.1, 1)  # width 1: 1.1x its measured cost
        model.update(0.0, 0, 1.3 * 1.16, 9)  # width 9: 1.3x
    assert model.verify_time(1) == pytest.approx(1.1, rel=0.02)
    assert model.verify_time(9) == pytest.approx(1.3 * 1.16, rel=0.02)
    assert model.verify_time(5) == model.verify_time(9)  # padded to width 9
    single = LatencyModel(0.0, table)
    for _ in range(100):
        single.update(0.0, 0, 1.3, 1)
    assert single.verify_time(1) == pytest.approx(1.3) and single.verify_time(3) == pytest.approx(1.3 * 1.04)
    single.update(0.0, 0, 20.0, 105)  # a prompt's prefill: not a step the table prices
    assert single.verify_time(1) == pytest.approx(1.3) and 105 not in single.width_factors


def test_measure_latencies_times_every_verify_size_and_resets_the_runners():
    table = np.random.default_rng(0).normal(size=(12, 12, 12))
    target, draft = ToyDecoder(table), ToyDecoder(table)
    latencies = measure_latencies(target, draft, np.array([1, 2, 3, 4, 5]), max_tokens=4, repeats=2)
    assert len(latencies.verify) == 5 and latencies.draft_step > 0
    assert np.all(np.diff(latencies.verify) >= 0)
    assert target.cache_length == 0 and draft.cache_length == 0


# ---------------------------------------------------------------- calibration and exactness on a real pair


@pytest.fixture(scope="module")
def calibrated_pair(llama_pair, loaded, tmp_path_factory):
    from optimum_dynexec.calibration import calibrate_pair

    directory = tmp_path_factory.mktemp("calibrated") / "pair"
    speculative = loaded(("speculative", "llama"),
                         lambda: load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir))
    speculative.save_pretrained(directory)
    llama_pair.tokenizer.save_pretrained(directory)
    prompts = ["hello world this is a test", "abc def ghi jkl", "one two three four five six",
               "the quick brown fox jumps", "lorem ipsum dolor sit amet", "zz yy xx ww vv uu"]
    summary = calibrate_pair(directory, prompts, max_new_tokens=40, max_lookahead=6, ov_config=F32,
                             progress=False, schedule="disco")
    return directory, summary


def test_calibration_of_a_vocabulary_pruned_draft(llama_pair, llama_plain, loaded, tmp_path):
    """Real pairs prune the draft's LM head (Qwen: 49,152 of 151,936 tokens); the signals of a pruned draft
    must stay finite through calibration and DISCO must keep the output exact."""
    from optimum_dynexec.calibration import calibrate_pair

    directory = tmp_path / "pair"
    speculative = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir,
                                   speculation={"draft_vocab_size": 64})
    speculative.save_pretrained(directory)
    llama_pair.tokenizer.save_pretrained(directory)
    prompts = ["hello world this is a test", "abc def ghi jkl", "one two three four five six", "zz yy xx ww vv"]
    calibrate_pair(directory, prompts, max_new_tokens=30, max_lookahead=6, ov_config=F32, progress=False,
                   schedule="disco")
    calibration = json.loads((directory / "dynexec_config.json").read_text())["calibration"]
    assert np.isfinite(calibration["classifier"]["weights"]).all() and np.isfinite(calibration["threshold"])
    model = load_speculative(directory)
    _, vocabulary = model._draft_runner(model.draft_model)
    assert vocabulary is not None and len(vocabulary) == 64
    ids = torch.from_numpy(np.random.default_rng(3).integers(4, llama_pair.vocab_size, (1, 6)))
    expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                    do_sample=False)
    actual = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"


def test_calibration_writes_a_usable_config_and_plot(calibrated_pair):
    directory, summary = calibrated_pair
    config = json.loads((directory / "dynexec_config.json").read_text())
    calibration = config["calibration"]
    assert config["version"] == CONFIG_VERSION and config["speculation"]["num_assistant_tokens_schedule"] == "disco"
    assert set(calibration["classifier"]) >= {"mean", "scale", "weights", "bias", "features"}
    assert 0 < calibration["threshold"] < 1 and calibration["max_lookahead"] == 6
    assert len(calibration["latencies"]["verify_seconds"]) == 7
    # the tiny target is small: two compiled copies are allowed, so up to three widths
    widths = calibration["verification_widths"]
    assert 1 <= len(widths) <= 3 and all(2 <= w <= 7 for w in widths) and widths == sorted(set(widths))
    assert calibration["stop_rule"] in ("token", "prefix") and summary["stop_rule"] == calibration["stop_rule"]
    assert summary["oracle"] >= summary["disco"] > 0
    assert (directory / "calibration.png").stat().st_size > 10_000


def test_calibrated_disco_pair_is_exact(llama_pair, llama_plain, calibrated_pair, loaded):
    directory, _ = calibrated_pair
    model = loaded(("disco", "llama"), lambda: load_speculative(directory))
    assert model.calibration is not None
    for seed in range(3):
        ids = torch.from_numpy(np.random.default_rng(seed).integers(4, llama_pair.vocab_size, (1, 6)))
        expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                        do_sample=False)
        actual = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                do_sample=False)
        assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"
    stats = model.last_generation_stats
    assert stats.draft_tokens_accepted > 0


def test_disco_on_two_verification_widths_runs_a_target_copy_and_stays_exact(llama_pair, llama_plain, calibrated_pair):
    """With two calibrated widths the short verifications run on the target's own request and the long ones on
    a compiled copy sharing its KV cache; the output is the target's own."""
    directory, _ = calibrated_pair
    model = load_speculative(directory)
    model.calibration = {**model.calibration, "verification_widths": [3, 6]}
    for seed in range(2):
        ids = torch.from_numpy(np.random.default_rng(seed).integers(4, llama_pair.vocab_size, (1, 6)))
        expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                        do_sample=False)
        actual = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                do_sample=False)
        assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"
    target = model._runner(model)
    assert target.input_widths == (3, 6) and target.dedicated_widths == (6,)
    assert max(model.last_generation_stats.proposed_per_step) <= 5  # the widest verification bounds the lookahead
    assert set(target._requests) == {6}  # the copy was compiled when the calibrated widths were set
    copy = target._requests[6]
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                   num_assistant_tokens_schedule="constant", num_assistant_tokens=2)
    assert target.dedicated_widths == () and target._requests[6] is copy  # kept for the next DISCO call
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                   num_assistant_tokens_schedule="constant", num_assistant_tokens=10, assistant_confidence_threshold=0.4)
    # uncalibrated widths run on the target's own request: no copy of their own to compile (or to evict the
    # calibrated one's)
    assert target.input_widths == (6, 11) and target.dedicated_widths == () and set(target._requests) == {6}
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert target._requests[6] is copy  # reused, not compiled again
    model.speculation_config.target_copies = 0  # copies off: one compiled model, same widths
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert target.dedicated_widths == () and not target._requests


def test_disco_lookahead_varies_per_step(llama_pair, calibrated_pair):
    directory, _ = calibrated_pair
    model = load_speculative(directory)
    # the calibrated widths follow this machine's timings (the tiny models may not pay for more than one token);
    # the classifier's decisions are what is tested here
    model.calibration = {**model.calibration, "verification_widths": [7]}
    ids = torch.from_numpy(np.random.default_rng(7).integers(4, llama_pair.vocab_size, (1, 6)))
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False)
    assert len(set(model.last_generation_stats.proposed_per_step)) > 1


def _force_cheap_draft(model, cap: int) -> None:
    """Start the cost policy from latencies where drafting pays (the tiny models are overhead-bound, so their
    measured draft step costs as much as a target call and the policy would rarely draft)."""
    cheap = LatencyModel(1e-5, [1e-3 * (1 + 0.01 * n) for n in range(cap + 1)])
    key = (id(model.draft_model.request), cap)
    model.__dict__.setdefault("_measured_latencies", {})[key] = cheap
    model.__dict__.pop("_cost_policies", None)  # a policy learnt by an earlier test would start from its state


@pytest.mark.parametrize("schedule_source", ["uncalibrated", "calibrated"])
def test_cost_policy_is_exact(llama_pair, llama_plain, llama_speculative, calibrated_pair, loaded, schedule_source):
    model = llama_speculative if schedule_source == "uncalibrated" else loaded(
        ("disco", "llama"), lambda: load_speculative(calibrated_pair[0]))
    model.compile()
    _force_cheap_draft(model, 6)
    proposed_any = False
    for seed in range(3):
        ids = torch.from_numpy(np.random.default_rng(seed).integers(4, llama_pair.vocab_size, (1, 5)))
        expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                        do_sample=False)
        actual = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                do_sample=False, num_assistant_tokens_schedule="cost", max_assistant_tokens=6,
                                draft_after_first_token=bool(seed % 2))
        assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"
        proposed_any |= model.last_generation_stats.draft_tokens_proposed > 0
        if seed % 2:
            assert model.last_generation_stats.proposed_per_step[0] == 0
    assert proposed_any


@pytest.mark.parametrize("per_token, widths", [(0.04, (1, 3, 7)), (0.2, (1, 2)), (0.1, (1, 2, 3))])
def test_cost_prompt_lookup_verifies_at_the_widest_affordable_widths(llama_pair, llama_plain, per_token, widths):
    model = load_speculative(llama_pair.target_dir, draft="prompt-lookup")
    cap = 8
    # a machine where each verified token adds ``per_token`` of a one-token call: the padded widths are the widest
    # costing at most 1.1 and 1.25 one-token calls
    model.__dict__.setdefault("_measured_latencies", {})[("lookup", cap)] = LatencyModel(
        0.0, [1e-3 * (1 + per_token * n) for n in range(cap + 1)])
    ids = torch.from_numpy(np.random.default_rng(3).integers(4, llama_pair.vocab_size, (1, 12)))
    ids[0, 6:] = ids[0, :6]
    expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                    do_sample=False)
    actual = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                            prompt_lookup_num_tokens=cap, num_assistant_tokens_schedule="cost")
    assert torch.equal(actual, expected)
    target = model._runner(model)
    assert target.input_widths == widths
    # drafting steps and target-only steps alternate between the widths: the drafting widths run on copies of
    # their own, so that no call pays the CPU plugin's per-shape work on every switch
    assert target.dedicated_widths == widths[1:] and set(target._requests) >= set(widths[1:])
    assert max(model.last_generation_stats.proposed_per_step) <= widths[-1] - 1


def test_cost_policy_with_prompt_lookup_is_exact(llama_pair, llama_plain, llama_speculative):
    ids = torch.from_numpy(np.random.default_rng(3).integers(4, llama_pair.vocab_size, (1, 12)))
    ids[0, 6:] = ids[0, :6]
    expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                    do_sample=False)
    actual = llama_speculative.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                        do_sample=False, prompt_lookup_num_tokens=4,
                                        num_assistant_tokens_schedule="cost")
    assert torch.equal(actual, expected)
    with pytest.raises(ValueError, match="needs a draft model"):
        llama_speculative.generate(input_ids=ids, max_new_tokens=5, prompt_lookup_num_tokens=4,
                                   num_assistant_tokens_schedule="disco")


def test_calibrated_policies_keep_the_sampling_distribution(llama_pair, llama_plain, calibrated_pair, loaded):
    from test_speculative_sampling import ALPHA, exact_pair_distribution, prompt, sampled_pairs

    model = loaded(("disco", "llama"), lambda: load_speculative(calibrated_pair[0]))
    options = {"top_k": 6}
    ids = prompt(llama_pair.vocab_size)
    for schedule in ("disco", "cost"):
        _force_cheap_draft(model, 6)
        cells = sampled_pairs(model, ids, options, num_assistant_tokens_schedule=schedule, max_assistant_tokens=6)
        stats = model.last_generation_stats
        assert stats.draft_tokens_proposed > 0 and 0 < stats.acceptance_rate < 1, schedule
        from conftest import chi_square_pvalue

        assert chi_square_pvalue(cells, exact_pair_distribution(llama_plain, ids, options)) > ALPHA, schedule


def test_calibration_refuses_pairs_it_cannot_calibrate(tmp_path, llama_speculative):
    from optimum_dynexec.calibration import calibrate_pair

    with pytest.raises(FileNotFoundError, match="dynexec_config.json not found"):
        calibrate_pair(tmp_path)
    (tmp_path / "dynexec_config.json").write_text(json.dumps({"version": 2, "draft": "prompt-lookup"}))
    with pytest.raises(ValueError, match="only pairs with a draft model"):
        calibrate_pair(tmp_path)
