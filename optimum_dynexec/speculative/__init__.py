"""Backend-free speculative decoding: token selection, acceptance rules, lookahead policies, drafters, the loop."""

from .drafters import ModelDrafter, PromptLookupDrafter, Proposal
from .logits import TokenSelector
from .loop import SpeculativeResult, speculative_generate
from .policies import ConfidencePolicy, HeuristicPolicy, LookaheadPolicy, make_policy
from .stats import SpeculationStats
from .verification import accept_greedy, accept_sampled

__all__ = [
    "ModelDrafter", "PromptLookupDrafter", "Proposal", "TokenSelector", "SpeculativeResult", "speculative_generate",
    "ConfidencePolicy", "HeuristicPolicy", "LookaheadPolicy", "make_policy", "SpeculationStats",
    "accept_greedy", "accept_sampled",
]
