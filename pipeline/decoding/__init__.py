"""The decoding engine: one block loop, pluggable policies, EoTP, per-step observers."""

from pipeline.decoding.loop import DecodeOutput, decode, generate_batch
from pipeline.decoding.policies import POLICIES, Policy, StepView, build_policy
from pipeline.decoding.settings import DecodeSettings

__all__ = ["POLICIES", "DecodeOutput", "DecodeSettings", "Policy", "StepView", "build_policy", "decode",
           "generate_batch"]
