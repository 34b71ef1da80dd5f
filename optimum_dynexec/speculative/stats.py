"""What a speculative ``generate`` did: proposals, acceptance, and where the time went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpeculationStats:
    """Counters and timings of one ``generate`` call (summed over the batch rows)."""

    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    #: tokens verified in the padding of the target's calls (free guesses after the drafts) and how many were kept
    fill_tokens_proposed: int = 0
    fill_tokens_accepted: int = 0
    seconds_total: float = 0.0
    seconds_target: float = 0.0
    seconds_draft: float = 0.0
    #: time to the first step's tokens (the prompt's prefill, the draft's included, and its first drafts: what
    #: openvino.genai reports as TTFT) and how many tokens that step emitted
    seconds_to_first_tokens: float = 0.0
    first_tokens: int = 0
    #: per speculative step: draft tokens proposed, and candidates accepted (drafts, then fill)
    proposed_per_step: list[int] = field(default_factory=list)
    accepted_per_step: list[int] = field(default_factory=list)

    @property
    def seconds_python(self) -> float:
        """Time in the Python loop itself (everything but the draft and target runtime calls)."""
        return max(0.0, self.seconds_total - self.seconds_target - self.seconds_draft)

    @property
    def python_fraction(self) -> float:
        return self.seconds_python / self.seconds_total if self.seconds_total else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens."""
        return self.draft_tokens_accepted / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Mean number of draft tokens accepted per target call."""
        return self.draft_tokens_accepted / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """New tokens per target call (accepted drafts + the target's own token)."""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds_total if self.seconds_total else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens/s after the first step: the rate speculation changes (the prompt's prefill is the same whatever
        the lookahead; openvino.genai's TPOT is this rate's inverse)."""
        seconds = self.seconds_total - self.seconds_to_first_tokens
        return (self.new_tokens - self.first_tokens) / seconds if seconds > 0 else 0.0

    def merge(self, other: "SpeculationStats") -> None:
        """Add another sequence's statistics (batch rows)."""
        for name in ("new_tokens", "target_calls", "draft_calls", "draft_tokens_proposed", "draft_tokens_accepted",
                     "fill_tokens_proposed", "fill_tokens_accepted", "seconds_total", "seconds_target", "seconds_draft",
                     "seconds_to_first_tokens", "first_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.proposed_per_step += other.proposed_per_step
        self.accepted_per_step += other.accepted_per_step

    def to_dict(self) -> dict:
        """Counters, timings and derived rates as plain JSON-able values."""
        summary = asdict(self)
        for name in ("seconds_python", "python_fraction", "acceptance_rate", "mean_accepted_length",
                     "tokens_per_target_call", "tokens_per_second", "decode_tokens_per_second"):
            summary[name] = getattr(self, name)
        return summary

    def __str__(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.seconds_total:.2f}s ({self.tokens_per_second:.1f} tokens/s); "
            f"{self.target_calls} target calls, {self.tokens_per_target_call:.2f} tokens/call; "
            f"draft accepted {self.draft_tokens_accepted}/{self.draft_tokens_proposed} "
            f"({self.acceptance_rate:.0%}); python {self.python_fraction:.1%} of the time"
        )
