"""Recent training-free unmasking rules, as policies of the one loop: the baselines a learned policy must beat.

Each follows the code its authors (or their lab) released; where the loop's one-block-at-a-time shape forces a
difference, the docstring names it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.errors import ConfigError, NonFiniteError
from pipeline.decoding.settings import check_probability
from pipeline.decoding.step import Policy, StepView


class LocalLeap(Policy):
    """LocalLeap (arXiv 2510.07081; ``get_transfer_index`` with ``relaxed_threshold`` and ``radius`` in its
    released ``generate.py``): masked positions of the block with confidence ``>= threshold`` are anchors; a
    masked position within ``radius`` of an anchor commits at ``>= relaxed_threshold``, any other at
    ``>= threshold``; the most confident always commits. Published settings: 0.9, 0.75, radius 4 (LLaDA-8B,
    GSM8K, 256/32). The reference ranks by a float64 softmax, the loop by float32."""

    name = "local_leap"

    def __init__(self, threshold: float = 0.9, relaxed_threshold: float = 0.75, radius: int = 4) -> None:
        self.threshold = check_probability(threshold, "decode.threshold")
        self.relaxed = check_probability(relaxed_threshold, "decode.relaxed_threshold")
        if radius is None or int(radius) < 0:
            raise ConfigError("decode.radius", radius, "allowed: an integer >= 0")
        self.radius = int(radius)

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        confident = view.masked & (view.scores >= self.threshold)
        near = F.max_pool1d(confident.float()[:, None], 2 * self.radius + 1, stride=1, padding=self.radius)[:, 0] > 0
        relaxed = near & (view.scores >= self.relaxed)
        best = view.first(view.scores, view.masked)
        return view.masked & (confident | relaxed) | best, view.predicted


class CreditDecoding(Policy):
    """CreditDecoding (arXiv 2510.06133; ``CreditThresholdParallelDecoder`` in inclusionAI/dInfer): each masked
    position accumulates credit for the token it predicts, ``C <- beta * C`` every step after the block's first,
    then ``C[v*] += p(v*) ** gamma``; the logits are fused with it, ``l + alpha * log(1 + C)``, and the fused
    prediction commits where its fused probability is ``>= min(threshold, the block's best - 1e-5)`` (so at least
    the best one). dInfer's settings: alpha 0.7, gamma 0.2, beta 0.8, threshold 0.9. Credit starts at zero in
    every block (dInfer keys it by block)."""

    name = "credit"

    def __init__(self, threshold: float = 0.9, alpha: float = 0.7, gamma: float = 0.2, beta: float = 0.8) -> None:
        self.threshold = check_probability(threshold, "decode.threshold")
        for setting, value in (("credit_alpha", alpha), ("credit_gamma", gamma), ("credit_beta", beta)):
            if value is None or float(value) < 0:
                raise ConfigError(f"decode.{setting}", value, "allowed: a number >= 0")
        self.alpha, self.gamma, self.beta = float(alpha), float(gamma), float(beta)
        self.credit: torch.Tensor | None = None  # [n, B, V] for the decoded batch

    def prepare(self, batch_size: int, references: torch.Tensor | None) -> None:
        self.credit, self.batch_size = None, batch_size

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        logits = view.logits
        if self.credit is None or self.credit.shape[1:] != logits.shape[1:]:
            self.credit = torch.zeros((self.batch_size, *logits.shape[1:]), device=logits.device)
        credit = self.credit[view.rows]
        if view.step == 0:
            credit.zero_()
        else:
            credit.mul_(self.beta)
        probs = torch.softmax(logits, dim=-1)
        top, token = probs.max(dim=-1)
        credit.scatter_add_(-1, token[..., None], (top.pow(self.gamma) * view.masked)[..., None])
        self.credit[view.rows] = credit
        fused = logits + self.alpha * torch.log1p(credit)
        fused_probs = torch.softmax(fused, dim=-1)
        confidence, chosen = fused_probs.max(dim=-1)
        if not bool((torch.isfinite(confidence) | ~view.masked).all()):
            raise NonFiniteError(f"decode=credit: the fused confidence is not finite at block {view.block}, step "
                                 f"{view.step} (credit_alpha={self.alpha:g}, credit_beta={self.beta:g}); lower "
                                 "decode.credit_alpha or decode.credit_beta")
        ranked = torch.where(view.masked, confidence, torch.full_like(confidence, -1.0))
        bar = torch.minimum(torch.full_like(ranked[:, 0], self.threshold), ranked.max(-1).values - 1e-5)
        return view.masked & (ranked >= bar[:, None]), chosen


# Prophet's exit bars on the top-1 minus top-2 logit gap, by the share of the schedule's steps taken (its
# generate_earlyexit.py): before a third, before two thirds, after.
PROPHET_GAPS = ((1 / 3, 7.5), (2 / 3, 5.0), (1.0, 2.5))


class Prophet(Policy):
    """Prophet-style early commit (pixeli99/Prophet, ``generate_earlyexit.py``): LLaDA's schedule, until the mean
    top-1 minus top-2 logit gap passes the published bar for the progress made (7.5 before a third of the
    steps, 5.0 before two thirds, 2.5 after), when everything still masked is committed at once.

    Two differences the loop's shape requires: the gap is averaged over the block's masked positions (the
    published code reads five positions after a forced "The answer is" anchor, a GSM8K prompt device), and once
    it fires a sample commits each later block whole at that block's first pass (the published code writes every
    later position from the firing pass, with no further pass)."""

    name = "prophet"
    adaptive = False

    def __init__(self, steps_per_block: int, num_blocks: int) -> None:
        self.steps_per_block, self.total = steps_per_block, steps_per_block * num_blocks
        self.fired: torch.Tensor | None = None

    def prepare(self, batch_size: int, references: torch.Tensor | None) -> None:
        self.fired = torch.zeros(batch_size, dtype=torch.bool)

    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        top2 = view.logits.topk(2, dim=-1).values
        gap = top2[..., 0] - top2[..., 1]
        masked = view.masked.float()
        mean_gap = (gap.nan_to_num(0.0, posinf=0.0, neginf=0.0) * masked).sum(-1) / masked.sum(-1).clamp(min=1)
        progress = (view.block * self.steps_per_block + view.step + 1) / self.total
        bar = next(value for limit, value in PROPHET_GAPS if progress < limit or limit == 1.0)
        fired = self.fired.to(view.rows.device)[view.rows] | (mean_gap >= bar)
        self.fired[view.rows.cpu()] = fired.cpu()
        scheduled = view.top_k(view.scores, view.masked, view.k)
        return torch.where(fired[:, None], view.masked, scheduled), view.predicted
