"""Policies: the LaST-R1 latent-reasoning VLA, its action tokenizer and backbones."""

from lastr1.models.action_tokenizer import ActionTokenizer, identity_action_stats
from lastr1.models.decode import DecodeConfig
from lastr1.models.load import load_policy, saved_family
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.models.policy_io import ActionOutput, LogProbs, PolicyBatch, PolicyInputs, SFTOutputs

__all__ = [
    "ActionOutput",
    "ActionTokenizer",
    "DecodeConfig",
    "LastR1Policy",
    "LogProbs",
    "PolicyBatch",
    "PolicyConfig",
    "PolicyInputs",
    "SFTOutputs",
    "identity_action_stats",
    "load_policy",
    "saved_family",
]
