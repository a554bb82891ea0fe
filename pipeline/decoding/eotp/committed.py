"""``eotp_rule=committed`` (the default): a committed end token ends the text."""

from __future__ import annotations

import torch

from pipeline.decoding.eotp.base import EndRule, Sequences, Step, cut_after_committed_end


class Committed(EndRule):
    """Once a step commits an end-of-text or end-of-turn, every later position is end-of-text and the sequence is
    cut after it, so later passes are shorter and finished samples drop out of the batch."""

    name = "committed"
    cuts = True

    def after_commit(self, seqs: Sequences, step: Step, commit: torch.Tensor, tokens: torch.Tensor,
                     decided: object) -> None:
        if bool((commit & torch.isin(tokens, seqs.ends)).any()):  # a cut moves only when an end was committed
            cut_after_committed_end(seqs, step.rows)
