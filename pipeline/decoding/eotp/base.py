"""What every EoTP rule shares: the batch's sequences it may cut, what one step shows it, and the plain cut."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import StepView


@dataclass
class Sequences:
    """The decoded batch as the loop holds it; a rule cuts a sample by writing end-of-text after the cut and lowering
    ``seq_end`` (later keys are hidden, later blocks skipped). Tensors are the loop's own, changed in place."""

    x: torch.Tensor  # [n, total] prompt (left-padded) and window
    seq_end: torch.Tensor  # [n] where each sample's sequence ends now
    prompt_len: int  # the window's first column
    eos_id: int
    mask_id: int
    ends: torch.Tensor  # every token id that ends the text (end-of-text, end-of-turn)


@dataclass
class Step:
    """What a rule reads of one step beyond the policy's view: where the block sits, every position's logits the
    pass computed (a predicted end may lie past the block), the oracle's references and the filter's acceptances."""

    view: StepView
    start: int  # the block's first column
    ahead: torch.Tensor  # [n, L, V] logits of the columns ahead_from .. ahead_from + L, in the model's dtype
    ahead_from: int
    references: torch.Tensor | None  # [n, gen_length] the oracle's reference windows, for these rows
    accepted: torch.Tensor | None  # [n, B] a learned filter's own acceptances at this step

    @property
    def rows(self) -> torch.Tensor:
        return self.view.rows


class EndRule:
    """No EoTP (``decode.eotp=false``): nothing is cut. Subclasses say when a sample's text has ended."""

    name = "none"
    cuts = False  # whether sequences can be cut (the loop then hides keys past each cut)
    pads_filter = False  # Learn2PD's filter reads a block cut short as zero padding

    def __init__(self, settings: DecodeSettings) -> None:
        self.settings = settings

    def before_commit(self, seqs: Sequences, step: Step) -> object:
        """Anything the rule decides from the step's state before its commit (the published rule chooses there)."""
        return None

    def after_commit(self, seqs: Sequences, step: Step, commit: torch.Tensor, tokens: torch.Tensor,
                     decided: object) -> None:
        """Cut where the text has ended, after the step's commit."""
        return None


def cut_after_committed_end(seqs: Sequences, rows: torch.Tensor) -> None:
    """After each sample's first end token in its window, fill the rest with end-of-text and cut the sequence."""
    x, prompt_len = seqs.x, seqs.prompt_len
    window = x[rows, prompt_len:]
    is_end = torch.isin(window, seqs.ends)
    has_end = is_end.any(-1)
    if not has_end.any():
        return
    first = is_end.long().argmax(-1)
    after = torch.arange(window.shape[1], device=x.device)[None, :] > first[:, None]
    x[rows, prompt_len:] = torch.where(after & has_end[:, None], torch.full_like(window, seqs.eos_id), window)
    cut = torch.where(has_end, prompt_len + first + 1, seqs.seq_end[rows])
    seqs.seq_end[rows] = torch.minimum(seqs.seq_end[rows], cut)


def cut_from(seqs: Sequences, rows: torch.Tensor, has: torch.Tensor, position: torch.Tensor, keep: bool) -> None:
    """Cut the samples that ``has`` one at ``position``: every later window column becomes end-of-text, and the
    position itself too unless ``keep``; the sequence ends after the position."""
    x = seqs.x
    columns = torch.arange(x.shape[1], device=x.device)[None, :]
    later = columns > position[:, None] if keep else columns >= position[:, None]
    fill = later & has[:, None] & (columns >= seqs.prompt_len)
    x[rows] = torch.where(fill, torch.full_like(x[rows], seqs.eos_id), x[rows])
    seqs.seq_end[rows] = torch.where(has, torch.minimum(seqs.seq_end[rows], position + 1), seqs.seq_end[rows])
