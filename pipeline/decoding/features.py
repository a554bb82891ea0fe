"""Per-position block features: what the learned filter reads and what trajectories record.

``confidence`` is the paper's single input; the others are this project's extensions. Every feature is a
``[n, B]`` tensor; :func:`block_features` stacks the requested ones into ``[n, B, F]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.decoding.policies import StepView


def _entropy(view: StepView, steps: int) -> torch.Tensor:
    """xlogy keeps tokens of probability 0 (the mask token's logit is -inf) at 0 instead of ``0 * -inf = NaN``."""
    probs = torch.softmax(view.logits, dim=-1)
    return -torch.special.xlogy(probs, probs).sum(-1)


def _margin(view: StepView, steps: int) -> torch.Tensor:
    top2 = torch.softmax(view.logits, dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def _position(view: StepView, steps: int) -> torch.Tensor:
    width = view.masked.shape[1]
    return (torch.arange(width, device=view.masked.device) / max(width - 1, 1)).expand_as(view.confidence)


def _step(view: StepView, steps: int) -> torch.Tensor:
    return torch.full_like(view.confidence, view.step / max(steps, 1))


FEATURES: dict[str, Callable[[StepView, int], torch.Tensor]] = {
    "confidence": lambda view, steps: view.confidence,
    "entropy": _entropy,
    "margin": _margin,
    "position": _position,
    "step": _step,
    "committed": lambda view, steps: (~view.masked).float(),
}


def block_features(view: StepView, names: tuple[str, ...], steps_per_block: int) -> torch.Tensor:
    """``[n, B, F]`` float32 features for the block, in the order of ``names``."""
    return torch.stack([FEATURES[name](view, steps_per_block).float() for name in names], dim=-1)
