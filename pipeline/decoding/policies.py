"""Unmasking policies: each decides, at one step, which masked positions of the current block to commit.

A policy sees a :class:`StepView` of the active samples' current block and returns a boolean commit mask and
the tokens to write there. The loop in :mod:`pipeline.decoding.loop` is the same for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.decoding.features import block_features
from pipeline.decoding.schedule import top_k_mask


@dataclass
class StepView:
    """One step of one block for the samples still working on it (``n`` rows, block length ``B``)."""

    logits: torch.Tensor  # [n, B, V] float32
    predicted: torch.Tensor  # [n, B] the token each position would take now
    confidence: torch.Tensor  # [n, B] softmax probability of that token, at every block position
    scores: torch.Tensor  # [n, B] ranking scores: the confidence, or random ones under random remasking
    masked: torch.Tensor  # [n, B] positions still masked before this step
    k: torch.Tensor  # [n] vanilla schedule's token count for this step
    rows: torch.Tensor  # [n] indices of these samples in the decoded batch
    block: int
    block_start: int  # offset of the block inside the generation window
    step: int  # step index within the block


class Policy(ABC):
    name: str
    adaptive: bool = True  # loops over a block until it is filled; False follows the fixed schedule
    needs_references: bool = False  # the oracle reads the reference outputs

    @abstractmethod
    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (commit mask [n, B], tokens [n, B]); only masked positions may be committed."""

    def prepare(self, batch_size: int, references: torch.Tensor | None) -> None:
        """Called once per decoded batch; policies that need per-sample context take it here."""
        return None


class Vanilla(Policy):
    """LLaDA's schedule: exactly ``m // s`` (+1 for the first ``m % s`` steps) most confident tokens per step."""

    name = "vanilla"
    adaptive = False

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        return top_k_mask(view.scores, view.masked, view.k), view.predicted


def check_threshold(value: float, setting: str) -> float:
    if value is None or not 0 < float(value) <= 1:
        raise ValueError(f"{setting}={value} is out of range; allowed: a number in (0, 1]")
    return float(value)


class Threshold(Policy):
    """Fast-dLLM: every masked position above ``threshold`` confidence, and at least the most confident one."""

    name = "threshold"

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = check_threshold(threshold, "decode.threshold")

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        above = view.masked & (view.scores > self.threshold)
        return above | top_k_mask(view.scores, view.masked, torch.ones_like(view.k)), view.predicted


class Factor(Policy):
    """Fast-dLLM's factor rule: the k-th most confident token (1-based) passes if ``c_k >= 1 - f / (k + 1)``;
    the largest passing prefix is committed, at least one token."""

    name = "factor"

    def __init__(self, factor: float = 1.0) -> None:
        if factor is None or float(factor) <= 0:
            raise ValueError(f"decode.factor={factor} is out of range; allowed: a number > 0")
        self.factor = float(factor)

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        ranked = torch.where(view.masked, view.scores, torch.full_like(view.scores, float("-inf")))
        sorted_scores = ranked.sort(dim=-1, descending=True).values
        kth = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device, dtype=ranked.dtype)
        passes = sorted_scores >= 1 - self.factor / (kth + 1)
        count = passes.long().cumprod(dim=-1).sum(dim=-1).clamp(min=1)
        return top_k_mask(view.scores, view.masked, count), view.predicted


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
        fallback = top_k_mask(view.scores, view.masked, torch.ones_like(view.k)) & ~matches.any(-1, keepdim=True)
        return matches | fallback, reference


class LearnedFilter(Policy):
    """Learn2PD: positions the filter accepts (sigmoid > threshold) united with the vanilla schedule's top-k."""

    name = "filter"

    def __init__(self, network: nn.Module, features: tuple[str, ...] = ("confidence",), threshold: float = 0.9,
                 steps_per_block: int = 1) -> None:
        self.network = network
        self.features = tuple(features)
        self.threshold = check_threshold(threshold, "decode.threshold")
        self.steps_per_block = steps_per_block

    @torch.no_grad()
    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        features = block_features(view, self.features, self.steps_per_block)
        param = next(self.network.parameters(), None)
        if param is not None:
            features = features.to(device=param.device, dtype=param.dtype)
        accept = torch.sigmoid(self.network(features).float()).to(view.masked.device) > self.threshold
        scheduled = top_k_mask(view.scores, view.masked, view.k)
        return (view.masked & accept) | scheduled, view.predicted


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Vanilla, Threshold, Factor, ExtremelyGreedy, LearnedFilter)
}


def policy_class(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"decode.policy={name!r} is unknown; allowed: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]
