"""The step schedules (LLaDA's, Dream's) and the small tensor helpers the policies share."""

from __future__ import annotations

import torch


def vanilla_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit at each of ``steps`` steps of a block, per sample: ``[n] -> [n, steps]``.

    Each step commits ``m // s`` tokens, plus one more during the first ``m % s`` steps (LLaDA's
    ``get_num_transfer_tokens``).
    """
    base = mask_count // steps
    remainder = mask_count % steps
    counts = base[:, None].expand(-1, steps).clone()
    counts += (torch.arange(steps, device=mask_count.device)[None, :] < remainder[:, None]).long()
    return counts


DREAM_EPS = 1e-3  # Dream's generation_config.eps: the last point of its time grid


def dream_share(step: int, steps: int, eps: float = DREAM_EPS) -> float:
    """The share ``1 - s / t`` of Dream's time grid at ``step`` (``t`` and ``s`` this step's two points of
    ``linspace(1, eps, steps + 1)``, in float32 as Dream computes them); 1 at the last step."""
    if step >= steps - 1:
        return 1.0
    grid = torch.linspace(1, eps, steps + 1)
    return float(1 - grid[step + 1] / grid[step])


def dream_count(masked_now: torch.Tensor, step: int, steps: int, eps: float = DREAM_EPS) -> torch.Tensor:
    """Dream's tokens to commit at ``step`` of ``steps`` (``_sample`` in Dream's ``generation_utils``):
    ``int(m * (1 - s / t))`` of the ``m`` positions masked now (:func:`dream_share`), and all of them at the last
    step. At one token per step it commits 0, 1, ..., 1, 2 (the first step commits nothing)."""
    if step >= steps - 1:
        return masked_now
    share = torch.tensor(dream_share(step, steps, eps), dtype=torch.float32)
    return (masked_now.float().cpu() * share).long().to(masked_now.device)


def top_k_mask(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the ``k[row]`` highest-scoring eligible positions (fewer if fewer are eligible)."""
    ranked = torch.where(eligible, scores, torch.full_like(scores, float("-inf")))
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return (rank < k[:, None]) & eligible


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Argmax at temperature 0; Gumbel-max sampling in float64 otherwise (LLaDA's ``add_gumbel_noise``)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits64 = logits.double()
    noise = torch.rand(logits64.shape, dtype=torch.float64, device=logits.device, generator=generator)
    gumbel = (-torch.log(noise)) ** temperature
    return (logits64.exp() / gumbel).argmax(dim=-1)
