"""Bidirectional attention shared by the embedded model and the native LLaDA and Dream, batch-invariant.

A left-padded batch must give each prompt what it gets alone. Hiding padded (or EoTP-cut) keys with a mask is not
enough in bf16: the attention kernel then reduces over a longer, differently split key axis and rounds otherwise,
and a prompt's logits move with its neighbours' lengths (by up to 0.3 on a logit scale of 8). So each row's keys,
one contiguous run ``[lo, hi)`` of the sequence, are attended over that run alone, rows sharing a run in one call:
the same kernel on the same shapes as the prompt alone. A mask that is not one run per row falls back to masked
attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class BlockCache:
    """Every layer's rotated keys and values for a whole sequence (Fast-dLLM's approximate block cache)."""

    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [batch, heads, seq, head_dim]
    values: list[torch.Tensor] = field(default_factory=list)

    def select(self, rows: torch.Tensor) -> BlockCache:
        return BlockCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


@dataclass(frozen=True)
class KeySpans:
    """The keys each row may read: ``mask`` [batch, total] and, where every row's keys are one run, the rows of each
    distinct run ``(rows, lo, hi)`` (``rows`` None: all of them). Computed once per forward pass (one host sync)."""

    mask: torch.Tensor
    runs: tuple[tuple[torch.Tensor | None, int, int], ...] | None

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> KeySpans:
        """Runs for inference; training (gradients on) keeps one masked call: a gradient step does not need a
        row's rounding to ignore its neighbours, and a padded training batch of many lengths would split apart."""
        mask = attention_mask.bool()
        if torch.is_grad_enabled():
            return cls(mask, None)
        total = mask.shape[1]
        lo = mask.long().argmax(-1)
        hi = total - mask.flip(-1).long().argmax(-1)
        bounds = torch.stack((lo, hi, mask.sum(-1))).tolist()
        if any(count != b - a or count == 0 for a, b, count in zip(*bounds)):
            return cls(mask, None)
        rows: dict[tuple[int, int], list[int]] = {}
        for row, (a, b) in enumerate(zip(bounds[0], bounds[1])):
            rows.setdefault((a, b), []).append(row)
        if len(rows) == 1:
            ((a, b),) = rows
            return cls(mask, ((None, a, b),))
        return cls(mask, tuple((torch.tensor(r, device=mask.device), a, b) for (a, b), r in rows.items()))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: KeySpans | None,
           past: tuple[torch.Tensor, torch.Tensor] | None, offset: int, record: BlockCache | None) -> torch.Tensor:
    """Bidirectional attention of one call's rotated queries, keys and values [batch, heads, seq, head_dim].

    ``record`` keeps this call's keys and values (before any grouped-query repeat, so a cache stays small);
    with ``past`` they replace the cached ones at ``offset ..`` and every other key and value is the cached one.
    Fewer key/value heads than query heads are repeated (query head h reads key/value head h // groups).
    ``keys`` (over the whole sequence) says which keys each row reads; queries outside a row's run get zeros."""
    seq = q.shape[2]
    if record is not None:
        record.keys.append(k)
        record.values.append(v)
    if past is not None:
        k = torch.cat((past[0][:, :, :offset], k, past[0][:, :, offset + seq :]), dim=2)
        v = torch.cat((past[1][:, :, :offset], v, past[1][:, :, offset + seq :]), dim=2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if keys is None:
        return F.scaled_dot_product_attention(q, k, v)  # no causal mask
    if keys.runs is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keys.mask[:, None, None, :])
    if len(keys.runs) == 1 and keys.runs[0][1:] == (0, k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v)
    out = q.new_zeros(q.shape[:3] + (v.shape[3],))
    for rows, lo, hi in keys.runs:
        a, b = max(lo - offset, 0), min(hi - offset, seq)
        if a >= b:
            continue
        if rows is None:
            out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi])
        else:
            out[rows, :, a:b] = F.scaled_dot_product_attention(q[rows, :, a:b], k[rows, :, lo:hi], v[rows, :, lo:hi])
    return out
