"""``eotp_rule=learn2pd``: Learn2PD's published rule, as its code has it."""

from __future__ import annotations

import torch

from pipeline.decoding.eotp.base import EndRule, Sequences, Step, cut_from
from pipeline.decoding.ranking import ranking_dtype


class Learn2PD(EndRule):
    """``generate_predict_eot`` / ``generate_l2p_eot`` (and ``generate_with_prefix_cache`` with ``cache=prefix``) in
    Learn2PD's ``llada/generate.py``. Before the step's commit: among positions still masked from the current block
    on whose prediction is end-of-text (``eos_id`` only, not end-of-turn), the most confident; with the filter, the
    first block position it accepted predicting end-of-text takes precedence. After the commit the sequence is
    truncated after that position (``x = x[:, :position + 1]``), which itself stays as the step left it: masked,
    to be decoded later. Nothing else cuts.

    Without a cache the search runs to the window's end; the cached code looks in the current block only, and so
    does this with ``cache=prefix``. The candidates' confidences are the softmax in the ranking precision (the
    references': the model's dtype, or float64 under a cache), whose ``argmax`` takes the first of equal ones as
    theirs does. After a cut the filter reads the block as the official one does: zeros past the cut. With
    reference outputs (the oracle), only positions where the reference also ends the text qualify.
    """

    name = "learn2pd"
    cuts = True
    pads_filter = True

    def before_commit(self, seqs: Sequences, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        x, rows, start, eos = seqs.x, step.rows, step.start, seqs.eos_id
        ahead, ahead_from, predicted, refs = step.ahead, step.ahead_from, step.view.predicted, step.references
        first, stop = max(start, ahead_from), ahead_from + ahead.shape[1]
        if self.settings.cache != "none":
            stop = min(stop, start + predicted.shape[1])
        window = ahead[:, first - ahead_from : stop - ahead_from]  # model dtype; candidates widened below
        positions = torch.arange(first, stop, device=x.device)[None, :]
        candidates = ((x[rows, first:stop] == seqs.mask_id) & (window.argmax(-1) == eos)
                      & (positions < seqs.seq_end[rows, None]))
        if refs is not None:
            candidates &= refs[:, first - seqs.prompt_len : stop - seqs.prompt_len] == eos
        precision = ranking_dtype(self.settings, window)
        confidence = torch.full(candidates.shape, -1.0, device=x.device, dtype=precision)
        row, col = candidates.nonzero(as_tuple=True)  # a softmax as the official code takes it (ties break alike)
        confidence[row, col] = torch.softmax(window[row, col].to(precision), dim=-1)[:, eos]
        best = first + confidence.argmax(-1)
        has = candidates.any(-1)
        if step.accepted is not None:  # generate_l2p_eot: the filter's own end-of-text acceptances come first
            ends_accepted = step.accepted & (predicted == eos)
            if refs is not None:
                block = start - seqs.prompt_len
                ends_accepted &= refs[:, block : block + ends_accepted.shape[1]] == eos
            chosen = ends_accepted.any(-1)
            best = torch.where(chosen, start + ends_accepted.long().argmax(-1), best)
            has = has | chosen
        return has, best

    def after_commit(self, seqs: Sequences, step: Step, commit: torch.Tensor, tokens: torch.Tensor,
                     decided: object) -> None:
        has, best = decided
        cut_from(seqs, step.rows, has, best, keep=True)
