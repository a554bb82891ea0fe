"""Unmasking policies: each decides, at one step, which masked positions of the current block to commit.

A policy sees a :class:`StepView` of the active samples' current block and returns a boolean commit mask and
the tokens to write there. The loop in :mod:`pipeline.decoding.loop` is the same for all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from models.errors import ConfigError, InputError, UserError, first_line
from pipeline.decoding.features import HISTORY_FEATURES, block_features
from pipeline.decoding.settings import FACTOR_RULES, DecodeSettings, check_probability
from pipeline.decoding.step import Policy, StepView
from pipeline.decoding.training_free import CreditDecoding, LocalLeap, Prophet


class Vanilla(Policy):
    """LLaDA's schedule: exactly ``m // s`` (+1 for the first ``m % s`` steps) most confident tokens per step."""

    name = "vanilla"
    adaptive = False

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        return view.top_k(view.scores, view.masked, view.k), view.predicted


class Threshold(Policy):
    """Fast-dLLM: every masked position with confidence ``>= threshold`` (``get_transfer_index`` in Fast-dLLM's
    ``llada/generate.py``), and at least the most confident one."""

    name = "threshold"

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = check_probability(threshold, "decode.threshold")

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        above = view.masked & (view.scores >= self.threshold)
        return above | view.first(view.scores, view.masked), view.predicted


class Factor(Policy):
    """Fast-dLLM's factor rule: the k-th most confident token (1-based) passes if ``c_k >= 1 - f / (k + 1)``;
    the largest passing prefix is committed, at least one token (``rule="paper"``, the published formula).

    ``rule="reference"`` follows Fast-dLLM's code (``get_transfer_index_dynamic``): when every ranked token but the
    last passes, the last is committed too, so a block whose least confident token fails still fills at once.
    """

    name = "factor"

    def __init__(self, factor: float = 1.0, rule: str = "paper") -> None:
        if factor is None or float(factor) <= 0:
            raise ConfigError("decode.factor", factor, "allowed: a number > 0")
        if rule not in FACTOR_RULES:
            raise ConfigError("decode.factor_rule", rule, f"allowed: {', '.join(FACTOR_RULES)}")
        self.factor, self.rule = float(factor), rule

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        ranked = torch.where(view.masked, view.scores, torch.full_like(view.scores, float("-inf")))
        sorted_scores = ranked.sort(dim=-1, descending=True).values
        kth = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device,
                           dtype=torch.promote_types(ranked.dtype, torch.float32))  # bf16 would round the bound
        passes = sorted_scores >= 1 - self.factor / (kth + 1)
        count = passes.long().cumprod(dim=-1).sum(dim=-1).clamp(min=1)
        if self.rule == "reference":
            masked = view.masked.sum(dim=-1)
            count = torch.where(count == masked - 1, masked, count)
        return view.top_k(view.scores, view.masked, count), view.predicted


class ExtremelyGreedy(Policy):
    """EGP, the oracle: commit every masked position whose prediction already equals the reference output.

    If none does, the reference token is written at the most confident masked position, so a block never stalls.
    """

    name = "egp"
    needs_references = True

    def __init__(self) -> None:
        self.references: torch.Tensor | None = None

    def prepare(self, batch_size: int, references: torch.Tensor | None) -> None:
        if references is None or references.shape[0] != batch_size:
            raise ValueError("decode.policy=egp needs reference outputs (one per prompt) from a vanilla decode")
        self.references = references

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        width = view.masked.shape[1]
        reference = self.references[view.rows, view.block_start : view.block_start + width].to(view.masked.device)
        matches = view.masked & (view.predicted == reference)
        fallback = view.first(view.scores, view.masked) & ~matches.any(-1, keepdim=True)
        return matches | fallback, reference


class LearnedFilter(Policy):
    """Learn2PD: positions the filter accepts (sigmoid > threshold) united with the vanilla schedule's top-k.

    ``speed``: the speed a speed-conditioned network decodes at (every row alike); None for any other network."""

    name = "filter"

    def __init__(self, network: nn.Module, features: tuple[str, ...] = ("confidence",), threshold: float = 0.9,
                 steps_per_block: int = 1, speed: float | None = None) -> None:
        self.network = network
        self.features = tuple(features)
        self.uses_history = bool(set(self.features) & set(HISTORY_FEATURES))
        self.threshold = check_probability(threshold, "decode.threshold")
        self.steps_per_block = steps_per_block
        self.speed = speed
        self.param = next(self.network.parameters(), None)  # where and in what dtype the filter runs

    def speeds(self, view: StepView) -> torch.Tensor | None:
        """The speed of each of the view's rows (``[n]``), or None for a network without a speed input."""
        if self.speed is None:
            return None
        return torch.full(view.rows.shape, float(self.speed))

    def logits(self, view: StepView, features: torch.Tensor) -> torch.Tensor:
        speeds = self.speeds(view)
        if speeds is None:
            return self.network(features).float()
        return self.network(features, speeds.to(features.device)).float()

    @torch.no_grad()
    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        features = block_features(view, self.features, self.steps_per_block)
        if view.cut is not None:  # Learn2PD's filter reads a block cut short as zero padding
            features = features.masked_fill(view.cut[..., None], 0.0)
        if self.param is not None:
            features = features.to(device=self.param.device, dtype=self.param.dtype)
        accept = torch.sigmoid(self.logits(view, features)).to(view.masked.device) > self.threshold
        scheduled = view.top_k(view.scores, view.masked, view.k)
        self.accepted = view.masked & accept  # the filter's own choice, before the schedule's (read by EoTP)
        return self.accepted | scheduled, view.predicted


class ReinforcedFilter(LearnedFilter):
    """A filter fine-tuned by reinforcement (``stage=train_policy``); at test time it decides as the supervised
    filter does, its probability against a threshold, at the speed asked for (``decode.speed``) or the one stored
    with it: one trained policy, every operating point."""

    name = "rl_filter"


class EntropyBounded(Policy):
    """The entropy-bounded sampler: masked positions in order of increasing entropy, the longest prefix whose
    entropy sum minus its largest entropy stays <= ``gamma`` (at least one position)."""

    name = "entropy_bounded"

    def __init__(self, gamma: float = 0.1) -> None:
        if gamma is None or float(gamma) < 0:
            raise ConfigError("decode.gamma", gamma, "allowed: a number >= 0")
        self.gamma = float(gamma)

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(view.logits, dim=-1)
        entropy = -torch.special.xlogy(probs, probs).sum(-1)
        ranked = torch.where(view.masked, entropy, torch.full_like(entropy, float("inf")))
        ordered = ranked.sort(dim=-1).values
        finite = torch.isfinite(ordered)
        total = torch.where(finite, ordered, 0).cumsum(-1)
        largest = torch.where(finite, ordered, 0).cummax(-1).values
        count = ((total - largest <= self.gamma) & finite).long().cumprod(-1).sum(-1).clamp(min=1)
        return view.top_k(-ranked, view.masked, count), view.predicted


class StableConfidence(Policy):
    """KLASS-style: commit positions whose confidence is >= ``threshold``, whose prediction has not changed since
    the previous step and whose distribution moved by less than ``kl_bound`` (KL to the previous step); otherwise
    the vanilla schedule's top-k."""

    name = "klass"
    uses_history = True

    def __init__(self, threshold: float = 0.9, kl_bound: float = 0.01) -> None:
        self.threshold = check_probability(threshold, "decode.threshold")
        if kl_bound is None or float(kl_bound) <= 0:
            raise ConfigError("decode.kl_bound", kl_bound, "allowed: a number > 0")
        self.kl_bound = float(kl_bound)

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        stable = (view.scores >= self.threshold) & (view.kl <= self.kl_bound) & (view.unchanged >= 1)
        return (view.masked & stable) | view.top_k(view.scores, view.masked, view.k), view.predicted


def policy_classes() -> dict[str, type[Policy]]:
    """Every policy by its name (the recent training-free rules live in :mod:`pipeline.decoding.training_free`)."""

    return {cls.name: cls for cls in (Vanilla, Threshold, Factor, ExtremelyGreedy, LearnedFilter, ReinforcedFilter,
                                      EntropyBounded, StableConfidence, LocalLeap, CreditDecoding, Prophet)}


def build_policy(settings: DecodeSettings, device: torch.device | str = "cpu") -> Policy:
    """The policy a decode setting names, built from its own parameters (the one place a name becomes a class)."""
    settings.validate()
    if settings.policy == "threshold":
        return Threshold(settings.threshold)
    if settings.policy == "factor":
        return Factor(settings.factor, settings.factor_rule)
    if settings.policy == "entropy_bounded":
        return EntropyBounded(settings.gamma)
    if settings.policy == "klass":
        return StableConfidence(settings.threshold, settings.kl_bound)
    if settings.policy in ("local_leap", "credit", "prophet"):

        if settings.policy == "local_leap":
            return LocalLeap(settings.threshold, settings.relaxed_threshold, settings.radius)
        if settings.policy == "credit":
            return CreditDecoding(settings.threshold, settings.credit_alpha, settings.credit_gamma,
                                  settings.credit_beta)
        return Prophet(settings.steps_per_block, settings.num_blocks)
    if settings.learned:
        from models.filter import BlockFilter

        if not settings.filter_path:
            raise ConfigError("decode.filter_path", None, f"decode={settings.policy} needs a saved filter (a "
                                                          "train_filter artifact's filter/ folder or a train_policy "
                                                          "artifact's policy/ folder)")
        try:
            network = BlockFilter.load(settings.filter_path, device)
        except UserError:  # a saved file's own rules, already naming the file and field
            raise
        except (OSError, ValueError, TypeError, RuntimeError, KeyError) as error:  # files that disagree
            raise InputError(settings.filter_path, f"the saved filter could not be loaded ({type(error).__name__}: "
                             f"{first_line(error)})", "retrain the filter or point decode.filter_path at another "
                                                      "one") from error
        if not network.config.any_block_length and network.config.block_length != settings.block_length:
            raise ConfigError("decode.block_length", settings.block_length,
                              f"the filter at {settings.filter_path} was trained for block_length="
                              f"{network.config.block_length}")
        threshold = settings.threshold if settings.threshold is not None else network.config.threshold
        if threshold is None:
            raise ConfigError("decode.threshold", None, f"the filter at {settings.filter_path} stores no validated "
                                                        "threshold (train_filter.target_precision was off); allowed: "
                                                        "a number in (0, 1]")
        speed = settings.filter_speed(network.config.speed_conditioned, network.config.speed, settings.filter_path)
        learned = ReinforcedFilter if settings.policy == "rl_filter" else LearnedFilter
        return learned(network, network.config.features, threshold, settings.steps_per_block, speed)
    return policy_classes()[settings.policy]()
