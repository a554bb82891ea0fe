"""``eotp_rule=learn2pd_filled``: this project's repair of Learn2PD's rule."""

from __future__ import annotations

import torch

from pipeline.decoding.eotp.base import EndRule, Sequences, Step, cut_after_committed_end, cut_from


class Learn2PDFilled(EndRule):
    """Among still-masked positions from the current block on whose prediction ends the text, cut the sequence
    after the most confident one: it and every later position become end-of-text, and a committed end token cuts
    too. (The published rule leaves the position masked, which let the model continue the text there once the
    context was cut: "#115" became "#1151".) With reference outputs (the oracle), only positions where the reference
    also ends the text qualify, so the oracle still reproduces the reference text exactly."""

    name = "learn2pd_filled"
    cuts = True

    def after_commit(self, seqs: Sequences, step: Step, commit: torch.Tensor, tokens: torch.Tensor,
                     decided: object) -> None:
        self._cut_at_predicted_end(seqs, step)
        cut_after_committed_end(seqs, step.rows)

    @staticmethod
    def _cut_at_predicted_end(seqs: Sequences, step: Step) -> None:
        x, rows, ahead, ahead_from, refs = seqs.x, step.rows, step.ahead, step.ahead_from, step.references
        first, stop = max(step.start, ahead_from), ahead_from + ahead.shape[1]
        top = ahead[:, first - ahead_from :].max(dim=-1)
        positions = torch.arange(first, stop, device=x.device)[None, :]
        candidates = ((x[rows, first:stop] == seqs.mask_id) & torch.isin(top.indices, seqs.ends)
                      & (positions < seqs.seq_end[rows, None]))
        if refs is not None:
            candidates &= torch.isin(refs[:, first - seqs.prompt_len : stop - seqs.prompt_len], seqs.ends)
        if not candidates.any():
            return
        row, col = candidates.nonzero(as_tuple=True)
        confidence = torch.full(candidates.shape, -1.0, device=x.device)
        chosen = ahead[row, first - ahead_from + col].float()
        confidence[row, col] = (chosen.gather(-1, top.indices[row, col, None]).squeeze(-1)
                                - chosen.logsumexp(-1)).exp()
        cut_from(seqs, rows, candidates.any(-1), first + confidence.argmax(-1), keep=False)
