"""Per-position block features: what the learned filter reads and what trajectories record.

``confidence`` is the paper's single input; the others are this project's extensions. Every feature is a
``[n, B]`` tensor; :func:`block_features` stacks the requested ones into ``[n, B, F]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.decoding.step import StepView


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


def _kl(view: StepView, steps: int) -> torch.Tensor:
    """How far the position's distribution moved since the previous step, squashed to [0, 1) (1 at step 0)."""
    return 1 - torch.exp(-view.kl.clamp(min=0))


def _stability(view: StepView, steps: int) -> torch.Tensor:
    """Steps the prediction has stayed the same, as a fraction of the block's steps."""
    return (view.unchanged.float() / max(steps, 1)).clamp(max=1)


def _is_end(view: StepView, steps: int) -> torch.Tensor:
    return torch.isin(view.predicted, view.ends).float()


def _distance_to_committed(view: StepView, steps: int) -> torch.Tensor:
    """Distance to the nearest committed position of the block, as a fraction of the block (1: none yet)."""
    width = view.masked.shape[1]
    index = torch.arange(width, device=view.masked.device).float()
    gaps = (index[None, :, None] - index[None, None, :]).abs().expand(view.masked.shape[0], -1, -1)
    gaps = torch.where((~view.masked)[:, None, :], gaps, torch.full_like(gaps, float(width)))
    return gaps.min(-1).values / width


def _masked_run_before(view: StepView, steps: int) -> torch.Tensor:
    """How many masked positions lie between this one and the committed text to its left (earlier blocks and the
    prompt are committed), as a fraction of the block: 0 right after the committed prefix. Text is written left to
    right, so a prediction next to the committed prefix rests on known tokens and one further right on guesses."""
    run = torch.zeros_like(view.confidence)
    width = view.masked.shape[1]
    for j in range(1, width):  # a cumulative count that restarts at every committed position
        run[:, j] = torch.where(view.masked[:, j - 1], run[:, j - 1] + 1, torch.zeros_like(run[:, j]))
    return run / width


def _distance_to_end(view: StepView, steps: int) -> torch.Tensor:
    """Signed distance to the first position of the block predicted to end the text, as a fraction of the block
    (1: none predicted)."""
    width = view.masked.shape[1]
    index = torch.arange(width, device=view.masked.device)
    ends = torch.isin(view.predicted, view.ends)
    first = torch.where(ends, index, width).min(-1).values
    return torch.where(ends.any(-1, keepdim=True), (index[None, :] - first[:, None]).float() / width,
                       torch.ones_like(view.confidence))


FEATURES: dict[str, Callable[[StepView, int], torch.Tensor]] = {
    "confidence": lambda view, steps: view.confidence,
    "entropy": _entropy,
    "margin": _margin,
    "position": _position,
    "step": _step,
    "committed": lambda view, steps: (~view.masked).float(),
    "kl": _kl,
    "stability": _stability,
    "is_end": _is_end,
    "distance_to_committed": _distance_to_committed,
    "distance_to_end": _distance_to_end,
    "masked_run_before": _masked_run_before,
}
HISTORY_FEATURES = ("kl", "stability")  # need the loop's step history


def block_features(view: StepView, names: tuple[str, ...], steps_per_block: int) -> torch.Tensor:
    """``[n, B, F]`` float32 features for the block, in the order of ``names``."""
    return torch.stack([FEATURES[name](view, steps_per_block).float() for name in names], dim=-1)
