"""The decoding engine: one block loop, pluggable policies, EoTP, per-step observers."""

from pipeline.decoding.loop import DecodeOutput, DecodeSettings, decode, generate_batch
from pipeline.decoding.policies import POLICIES, Policy, StepView, policy_class

__all__ = ["POLICIES", "DecodeOutput", "DecodeSettings", "Policy", "StepView", "decode", "generate_batch",
           "policy_class"]
