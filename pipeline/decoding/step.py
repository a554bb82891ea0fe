"""What a policy sees at one step (:class:`StepView`) and what it answers (:class:`Policy`): the contract between
the one decoding loop (:mod:`pipeline.decoding.loop`) and every policy, features and EoTP rules included."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from pipeline.decoding.ranking import Ranker


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
    ends: torch.Tensor | None = None  # token ids that end the text (end-of-text, end-of-turn)
    # With step history (policies and features that read it): how the prediction moved since the previous step.
    kl: torch.Tensor | None = None  # [n, B] KL(previous || current) of each position's distribution; inf at step 0
    unchanged: torch.Tensor | None = None  # [n, B] consecutive steps the predicted token has stayed the same
    ranker: Ranker = field(default_factory=Ranker)  # how ties break: the project's rule or the references'
    cut: torch.Tensor | None = None  # [n, B] positions past the sequence's EoTP cut (Learn2PD's filter sees zeros)

    def top_k(self, scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Per row, the ``k[row]`` best eligible positions, ties broken by this decode's ranking rule."""
        return self.ranker.top_k(scores, eligible, k)

    def first(self, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Per row, the single best eligible position (the one a threshold rule always commits)."""
        return self.ranker.first(scores, eligible)


class Policy(ABC):
    name: str
    uses_history: bool = False  # reads StepView.kl / unchanged, which the loop then tracks
    adaptive: bool = True  # loops over a block until it is filled; False follows the fixed schedule
    needs_references: bool = False  # the oracle reads the reference outputs
    accepted: torch.Tensor | None = None  # a learned filter's own acceptances at its last step (Learn2PD's EoTP)

    @abstractmethod
    def select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (commit mask [n, B], tokens [n, B]); only masked positions may be committed."""

    def prepare(self, batch_size: int, references: torch.Tensor | None) -> None:
        """Called once per decoded batch; policies that need per-sample context take it here."""
        return None
