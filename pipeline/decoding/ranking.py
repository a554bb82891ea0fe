"""Which of a block's positions a step takes first: the project's rule and the references' own.

Equal scores are common in bf16 (a coarse softmax), so which tied position wins decides the decode. The project
ranks with a stable sort, the lower position first (:class:`Ranker`, ``decode.ranking_precision=float32``). The
references (LLaDA's ``generate``, Fast-dLLM's ``get_transfer_index``, Dream's ``_sample``, Learn2PD) call
``torch.topk`` per sample on a tensor of their own shape, and ``topk``'s choice among ties depends on that tensor's
length and where the block sits in it: :class:`ReferenceRanker` (``ranking_precision=model|float64``) makes the
same call on a tensor of the same shape, the sample's own (as if decoded alone, without the batch's padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.decoding.schedule import top_k_mask
from pipeline.decoding.settings import DecodeSettings


def ranking_dtype(settings: DecodeSettings, raw: torch.Tensor) -> torch.dtype:
    """The dtype a step's softmax is ranked in: float32 (the project's), the model's own, or float64."""
    return {"float32": torch.float32, "model": raw.dtype, "float64": torch.float64}[settings.ranking_precision]


class Ranker:
    """The project's rule: a stable descending sort (the lower position wins a tie). No host sync."""

    def top_k(self, scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Per row, the ``k[row]`` highest-scoring eligible positions (fewer if fewer are eligible)."""
        return top_k_mask(scores, eligible, k)

    def first(self, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Per row, the one position a rule commits whatever its threshold says (Fast-dLLM's ``select_index[0]``)."""
        return top_k_mask(scores, eligible, torch.ones(scores.shape[0], dtype=torch.long, device=scores.device))


class ReferenceRanker(Ranker):
    """``torch.topk`` per sample, as the references call it, on the tensor they build: ``-inf`` everywhere but the
    block's eligible positions, which sit at ``lead[row]`` in a tensor of ``length[row]`` (the whole sequence on a
    full pass; from the block's start to the sequence's end under Fast-dLLM's prefix cache; the block alone under its
    dual cache). One host sync per call; only the reference modes pay it."""

    def __init__(self, lead: Sequence[int], length: Sequence[int]) -> None:
        self.lead, self.length = list(lead), list(length)

    def _order(self, ranked: torch.Tensor, row: int, k: int) -> torch.Tensor:
        """Block positions of the reference's ``topk(k)`` for one row, in its order (outside the block dropped)."""
        lead, width = self.lead[row], ranked.shape[1]
        span = max(0, min(width, self.length[row] - lead))
        line = ranked.new_full((self.length[row],), float("-inf"))
        line[lead : lead + span] = ranked[row, :span]
        chosen = line.topk(min(k, len(line))).indices - lead
        return chosen[(chosen >= 0) & (chosen < span)]

    def top_k(self, scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ranked = torch.where(eligible, scores, torch.full_like(scores, float("-inf")))
        chosen = torch.zeros_like(eligible)
        for row, count in enumerate(k.tolist()):
            if count > 0:
                chosen[row, self._order(ranked, row, count)] = True
        return chosen & eligible

    def first(self, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Fast-dLLM ranks every masked position (``k`` = their number) and always keeps the first it returns."""
        ranked = torch.where(eligible, scores, torch.full_like(scores, float("-inf")))
        chosen = torch.zeros_like(eligible)
        for row, count in enumerate(eligible.sum(-1).tolist()):
            if count > 0:
                chosen[row, self._order(ranked, row, count)[:1]] = True
        return chosen & eligible
