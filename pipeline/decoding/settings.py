"""A decode setting: one typed object from the ``decode`` config group to the decoding loop.

It is the Hydra schema of the ``decode`` group (so types are checked when the config is composed), the unit a
sweep expands its grid into, and what the loop and policies read. Torch-free, so settings can be validated
before any heavy import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from models.errors import ConfigError

# The policies and the settings each one reads (beyond the loop's): the names a config may use.
POLICY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "threshold": ("threshold",),
    "factor": ("factor", "factor_rule"),
    "egp": (),
    "filter": ("threshold", "filter_path"),
    "rl_filter": ("threshold", "filter_path", "speed"),
    "entropy_bounded": ("gamma",),
    "klass": ("threshold", "kl_bound"),
    "local_leap": ("threshold", "relaxed_threshold", "radius"),
    "credit": ("threshold", "credit_alpha", "credit_gamma", "credit_beta"),
    "prophet": (),
}
LEARNED = ("filter", "rl_filter")  # decoded by a saved filter network
NEEDS_REFERENCES = ("egp",)  # the oracle reads the vanilla output of the same window
# Dream's alg: maskgit_plus, -, topk_margin, entropy, origin
REMASKING = ("low_confidence", "random", "margin", "entropy", "origin")
RANKING_PRECISIONS = ("float32", "model", "float64")
SCHEDULES = ("llada", "dream")
CACHES = ("none", "prefix", "dual")
FACTOR_RULES = ("paper", "reference")
EOTP_RULES = ("committed", "learn2pd", "learn2pd_filled")
MASK_TOKEN = ("excluded", "included")


@dataclass
class DecodeSettings:
    policy: str = "vanilla"
    gen_length: int = 64
    block_length: int = 16
    steps: int | None = None  # None: one token per step (steps = gen_length), the reference setting
    temperature: float = 0.0
    remasking: str = "low_confidence"  # the ranking score: top-1 probability | random | top-1 - top-2 | -entropy
    #                                    | origin (Dream's: each masked position by chance, 1 - s/t of its grid)
    ranking_precision: str = "float32"  # the ranking softmax: float32 (mask token excluded) | model (the model's
    #                                     dtype, whole vocabulary: LLaDA's generate) | float64 (Fast-dLLM's)
    mask_token: str = "excluded"  # excluded (the project's rule: never predicted, so a block always fills) |
    #                               included (the references' argmax over the whole vocabulary)
    schedule: str = "llada"  # tokens per step: llada (m // steps, remainder first) | dream (Dream's time grid)
    eotp: bool = False
    eotp_rule: str = "committed"  # committed | learn2pd (the published rule) | learn2pd_filled (its repair)
    batch_size: int = 32
    seed: int = 0
    cache: str = "none"  # none | prefix | dual (Fast-dLLM's approximate KV caches; change outputs slightly)
    threshold: float | None = 0.9  # threshold, klass and filter; filter: None = the threshold stored with it
    factor: float = 1.0  # factor policy
    factor_rule: str = "paper"  # paper (the published formula) | reference (Fast-dLLM's code, see policies.Factor)
    gamma: float = 0.1  # entropy_bounded: the entropy budget of a step
    kl_bound: float = 0.01  # klass: how little a distribution may move between steps to count as stable
    relaxed_threshold: float = 0.75  # local_leap: the bar within `radius` of a position above `threshold`
    radius: int = 4  # local_leap
    credit_alpha: float = 0.7  # credit: weight of log(1 + credit) added to the logits
    credit_gamma: float = 0.2  # credit: a step's credit is the predicted probability to this power
    credit_beta: float = 0.8  # credit: decay of the accumulated credit per step
    filter_path: str | None = None  # filter, rl_filter: a saved filter; None = this experiment's train_filter
    #                                 (filter) or train_policy (rl_filter)
    speed: float | None = None  # rl_filter: the speed-conditioned policy's knob (the reward's speed weight it acts
    #                             for; higher commits more per step); None = the speed stored with the policy

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // self.num_blocks

    @property
    def learned(self) -> bool:
        """A learned policy: the supervised filter or the one fine-tuned by reinforcement."""
        return self.policy in LEARNED

    @property
    def needs_references(self) -> bool:
        return self.policy in NEEDS_REFERENCES

    def replace(self, **changes: Any) -> DecodeSettings:
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """Only what the chosen policy reads, so one setting has one identity however it was written."""
        loop = ("policy", "gen_length", "block_length", "steps", "temperature", "remasking", "eotp", "batch_size",
                "seed", "cache")
        rule = ("eotp_rule",) if self.eotp and self.eotp_rule != "committed" else ()  # old keys stay valid
        schedule = ("schedule",) if self.schedule != "llada" else ()
        precision = ("ranking_precision",) if self.ranking_precision != "float32" else ()
        mask = ("mask_token",) if self.mask_token != "excluded" else ()
        return {k: getattr(self, k) for k in (*loop, *rule, *schedule, *precision, *mask,
                                              *POLICY_PARAMETERS.get(self.policy, ()))}

    def validate(self, prefix: str = "decode") -> DecodeSettings:
        """Raise on any bad value, naming it and what is allowed; called before any decoding."""
        if self.policy not in POLICY_PARAMETERS:
            raise ConfigError(f"{prefix}.policy", self.policy, f"allowed: {', '.join(sorted(POLICY_PARAMETERS))}")
        for name in ("gen_length", "block_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "allowed: an integer >= 1")
        if self.gen_length % self.block_length:
            raise ConfigError(f"{prefix}.block_length", self.block_length,
                              f"must divide {prefix}.gen_length={self.gen_length}")
        if self.total_steps < 1 or self.total_steps % self.num_blocks:
            raise ConfigError(f"{prefix}.steps", self.total_steps,
                              f"allowed: a positive multiple of the number of blocks ({self.num_blocks} = "
                              f"gen_length / block_length)")
        if self.temperature < 0:
            raise ConfigError(f"{prefix}.temperature", self.temperature, "allowed: a number >= 0")
        if self.cache not in CACHES:
            raise ConfigError(f"{prefix}.cache", self.cache, f"allowed: {', '.join(CACHES)}")
        if self.eotp_rule not in EOTP_RULES:
            raise ConfigError(f"{prefix}.eotp_rule", self.eotp_rule, f"allowed: {', '.join(EOTP_RULES)}")
        if self.remasking not in REMASKING:
            raise ConfigError(f"{prefix}.remasking", self.remasking, f"allowed: {', '.join(REMASKING)}")
        if self.ranking_precision not in RANKING_PRECISIONS:
            raise ConfigError(f"{prefix}.ranking_precision", self.ranking_precision,
                              f"allowed: {', '.join(RANKING_PRECISIONS)}")
        if self.mask_token not in MASK_TOKEN:
            raise ConfigError(f"{prefix}.mask_token", self.mask_token, f"allowed: {', '.join(MASK_TOKEN)}")
        if self.eotp and self.eotp_rule == "learn2pd" and self.cache == "dual":
            raise ConfigError(f"{prefix}.cache", self.cache,
                              "with eotp_rule=learn2pd reproduces no decoder this project follows (Learn2PD's "
                              "generate_with_dual_cache keeps the keys of cut positions); allowed with learn2pd: none "
                              "(generate_predict_eot, generate_l2p_eot), prefix (generate_with_prefix_cache); or "
                              "eotp_rule=committed|learn2pd_filled with cache=dual")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"{prefix}.schedule", self.schedule, f"allowed: {', '.join(SCHEDULES)}")
        if "threshold" in POLICY_PARAMETERS[self.policy] and not (self.learned and self.threshold is None):
            check_probability(self.threshold, f"{prefix}.threshold")
        if self.policy == "rl_filter" and self.speed is not None and not self.speed >= 0:
            raise ConfigError(f"{prefix}.speed", self.speed, "allowed: a number >= 0, or null (the policy's stored "
                                                             "speed)")
        if self.policy == "entropy_bounded" and not self.gamma >= 0:
            raise ConfigError(f"{prefix}.gamma", self.gamma, "allowed: a number >= 0")
        if self.policy == "local_leap":
            check_probability(self.relaxed_threshold, f"{prefix}.relaxed_threshold")
            if self.relaxed_threshold > self.threshold:
                raise ConfigError(f"{prefix}.relaxed_threshold", self.relaxed_threshold,
                                  f"above {prefix}.threshold ({self.threshold:g}), so nothing near an anchor is "
                                  f"relaxed; allowed: a number in (0, {self.threshold:g}]")
            if self.radius < 0:
                raise ConfigError(f"{prefix}.radius", self.radius, "allowed: an integer >= 0")
        if self.policy == "credit":
            for name in ("credit_alpha", "credit_gamma", "credit_beta"):
                if not getattr(self, name) >= 0:
                    raise ConfigError(f"{prefix}.{name}", getattr(self, name), "allowed: a number >= 0")
            self.check_credit_range(prefix)
        if self.policy == "klass" and not self.kl_bound > 0:
            raise ConfigError(f"{prefix}.kl_bound", self.kl_bound, "allowed: a number > 0")
        if self.policy == "factor":
            if not self.factor > 0:
                raise ConfigError(f"{prefix}.factor", self.factor, "allowed: a number > 0")
            if self.factor_rule not in FACTOR_RULES:
                raise ConfigError(f"{prefix}.factor_rule", self.factor_rule, f"allowed: {', '.join(FACTOR_RULES)}")
        return self

    def filter_speed(self, conditioned: bool, stored: float | None, where: str) -> float | None:
        """The speed a saved filter at ``where`` decodes at: ``decode.speed`` (rl_filter) or the one stored with
        it; None for a filter without a speed input, which refuses a given one."""
        asked = self.speed if self.policy == "rl_filter" else None
        if not conditioned:
            if asked is not None:
                raise ConfigError("decode.speed", asked, f"the policy at {where} is not speed-conditioned (a "
                                                         "supervised filter, or a policy trained before the knob); "
                                                         "allowed: null")
            return None
        speed = asked if asked is not None else stored
        if speed is None:
            raise ConfigError("decode.speed", None, f"the speed-conditioned policy at {where} stores no default "
                                                    "speed; allowed: a number >= 0")
        return speed

    def check_credit_range(self, prefix: str) -> None:
        """CreditDecoding keeps its credit and fused logits in float32: the largest credit a block can gather (one
        increment of at most 1 per step, decayed by ``credit_beta``, over at most ``block_length`` steps of an
        adaptive policy) and ``credit_alpha * log(1 + credit)`` must stay far inside float32, or the fused
        confidence turns NaN and nothing can be committed."""
        try:
            credit = sum(self.credit_beta**i for i in range(self.block_length))
        except OverflowError:
            credit = math.inf
        if credit > FLOAT32_MAX:
            raise ConfigError(f"{prefix}.credit_beta", self.credit_beta,
                              f"the credit it keeps over a block of {self.block_length} steps overflows float32; "
                              f"allowed: a number >= 0 whose powers up to {self.block_length - 1} sum below "
                              f"{FLOAT32_MAX:.3g} (the published value is 0.8)")
        if self.credit_alpha * math.log1p(credit) > FLOAT32_MAX / 4:
            raise ConfigError(f"{prefix}.credit_alpha", self.credit_alpha,
                              f"alpha * log(1 + credit) overflows float32; allowed: a number from 0 to "
                              f"{FLOAT32_MAX / 4 / math.log1p(credit):.3g} (the published value is 0.7)")


FLOAT32_MAX = 3.4028234663852886e38  # where the loop's float32 scores overflow


def check_probability(value: float | None, setting: str) -> float:
    """Thresholds on a probability: in (0, 1]."""
    if value is None or not 0 < float(value) <= 1:
        raise ConfigError(setting, value, "allowed: a number in (0, 1]")
    return float(value)
