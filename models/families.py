"""How each model family is called and read: one adapter per family, so the decoding loop never special-cases one.

- ``embedded``: this project's model, called as it is (it also serves the block caches).
- ``llada``: LLaDA's remote code takes ``input_ids`` and a 2D ``attention_mask`` and no ``position_ids``
  (positions are 0..L-1; with rotary embeddings a left pad shifts every position equally, which attention does
  not see, so a model that honours the mask gives padded and unpadded prompts the same outputs).
- ``dream``: Dream's remote code takes a 4D boolean ``attention_mask`` [B, 1, L, L] and ``position_ids``, as its
  own sampler builds them; Dream was initialised from an autoregressive model, so the logits at position i-1
  predict token i: they are shifted right by one (the first position keeps its own) before being read, as
  Dream's ``generation_utils`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FAMILIES = ("embedded", "llada", "dream")


@dataclass
class Logits:
    logits: torch.Tensor

    def get(self, name: str, default=None):
        return getattr(self, name, default)


class FamilyAdapter(nn.Module):
    """Calls a hub dLLM the way its family expects and returns logits aligned with the positions they predict."""

    supports_block_cache = False  # hub remote code does not take the loop's per-layer cache

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        if family not in ("llada", "dream"):
            raise ValueError(f"no adapter for model family {family!r}; allowed: llada, dream")
        self.model, self.family = model, family
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **_: object) -> Logits:
        if self.family == "llada":
            mask = None if attention_mask is None else attention_mask.long()
            return Logits(self.model(input_ids, attention_mask=mask).logits)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        seq = input_ids.shape[1]
        mask4d = attention_mask.bool()[:, None, None, :].expand(-1, 1, seq, seq)
        logits = self.model(input_ids, attention_mask=mask4d, position_ids=position_ids).logits
        return Logits(torch.cat([logits[:, :1], logits[:, :-1]], dim=1))


def adapt(model: nn.Module, family: str) -> nn.Module:
    """The module the decoding loop calls for a model of ``family``."""
    return model if family == "embedded" else FamilyAdapter(model, family)


@torch.no_grad()
def honours_attention_mask(model: nn.Module, prompt: list[int], pad_id: int, mask_id: int, width: int = 8,
                           pad: int = 3) -> bool:
    """Whether left padding, hidden by the attention mask, leaves a prompt's outputs unchanged.

    LLaDA's older remote code ignores the mask, so batched left-padded prompts change its outputs; such a model
    must be decoded one prompt at a time.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + [mask_id] * width], device=device)
    padded = torch.cat([torch.full((1, pad), pad_id, device=device), ids], dim=1)
    attention = torch.ones_like(padded, dtype=torch.bool)
    attention[:, :pad] = False
    # from the second real position on: a family that shifts logits gives the first one a pad's output
    alone = model(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool)).logits[:, 1:].float()
    with_pads = model(padded, attention_mask=attention,
                      position_ids=(attention.long().cumsum(-1) - 1).clamp(min=0)).logits[:, pad + 1 :].float()
    scale = alone.abs().max().clamp(min=1e-6)
    return bool(((alone - with_pads).abs().max() / scale) < 1e-2)
