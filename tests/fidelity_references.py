"""Plain re-statements of the published reference decoders, for one prompt (batch 1, no padding, temperature 0).

Each function is written from the published code's behaviour, line by line in meaning but not in text, with none of
the project's decoding helpers, so ``tests/test_fidelity.py`` can hold the project's one loop
(``pipeline.decoding.loop.decode``) token-identical to it. Every one takes a model called as
``model(ids).logits`` (and, for the caches, ``return_cache=True`` / ``past=..., past_offset=...``) and returns the
generated window as a list of ``gen_length`` token ids (end-of-text after a cut).

What each reference computes in which dtype matters in bfloat16, where probabilities tie:
- LLaDA ``generate`` and Learn2PD's uncached decoders: softmax of the logits in their own (the model's) dtype over
  the whole vocabulary (mask token included), argmax over the whole vocabulary, ``torch.topk`` on the whole
  sequence's confidence.
- Fast-dLLM's ``get_transfer_index`` and Learn2PD's cached one: softmax in float64.
- Dream's ``sample_tokens``: softmax in the logits' dtype (the official model does not upcast its logits), the
  token and its confidence from ``probs.max``, and the confidence held in the logits' dtype.
"""

from __future__ import annotations

import torch

from models.attention import BlockCache

NEG_INF = float("-inf")


def llada_counts(masked: int, steps: int) -> list[int]:
    """LLaDA's ``get_num_transfer_tokens``: ``masked // steps`` per step, one more in the first ``masked % steps``."""
    return [masked // steps + (1 if i < masked % steps else 0) for i in range(steps)]


def _logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, object]:
    out = model(ids[None], **kwargs)
    return out.logits[0], getattr(out, "cache", None) if kwargs.get("return_cache") else None


def _window(x: torch.Tensor, prompt_len: int, gen_length: int, eos_id: int) -> list[int]:
    """The generated part, padded with end-of-text after a truncation (the project's output convention)."""
    window = x[prompt_len:].tolist()
    return window + [eos_id] * (gen_length - len(window))


def _prefix(cache: BlockCache, start: int) -> BlockCache:
    """Fast-dLLM's prefix cache: only the keys and values before the block survive the block's first pass."""
    return BlockCache([k[:, :, :start] for k in cache.keys], [v[:, :, :start] for v in cache.values])


@torch.no_grad()
def llada_generate(model: torch.nn.Module, prompt: list[int], gen_length: int, block_length: int, steps: int,
                   mask_id: int) -> list[int]:
    """ML-GSAI/LLaDA ``generate.py`` ``generate`` (low_confidence, temperature 0, no CFG).

    Fixed ``steps // num_blocks`` steps per block; x0 = argmax over the whole vocabulary (LLaDA takes it of
    ``exp(logits.double())``, the same order); p = softmax of the logits in their own dtype; x0_p beyond the block
    end is -inf; the confidence is ``where(mask, x0_p, -inf)`` over the whole sequence and ``torch.topk`` of it, with
    ``get_num_transfer_tokens`` counts, picks the positions.
    """
    x = torch.tensor(prompt + [mask_id] * gen_length)
    per_block = steps // (gen_length // block_length)
    for block in range(gen_length // block_length):
        end = len(prompt) + (block + 1) * block_length
        counts = llada_counts(int((x[end - block_length : end] == mask_id).sum()), per_block)
        for i in range(per_block):
            mask = x == mask_id
            logits, _ = _logits(model, x)
            x0 = logits.argmax(-1)
            x0_p = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
            x0_p[end:] = NEG_INF
            confidence = torch.where(mask, x0_p, NEG_INF)
            chosen = torch.topk(confidence, counts[i]).indices
            x[chosen] = torch.where(mask, x0, x)[chosen]
    return x[len(prompt) :].tolist()


def fast_dllm_transfer(logits: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, count: int,
                       threshold: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-dLLM's ``get_transfer_index`` (NVlabs/Fast-dLLM ``llada/generate.py``) on one row: softmax in float64;
    ``topk`` of ``where(mask, x0_p, -inf)`` on the tensor it is given; with a threshold, k is the number of masked
    positions, the first ranked is always taken and every other only if its confidence is >= threshold."""
    x0 = logits.argmax(-1)
    x0_p = torch.softmax(logits.double(), -1).gather(-1, x0[:, None])[:, 0]
    x0 = torch.where(mask, x0, x)
    confidence = torch.where(mask, x0_p, NEG_INF)
    k = int(mask.sum()) if threshold is not None else count
    ranked = torch.topk(confidence, k).indices
    transfer = torch.zeros_like(mask)
    transfer[ranked] = True
    if threshold is not None:
        for r in range(1, k):
            if confidence[ranked[r]] < threshold:
                transfer[ranked[r]] = False
    return x0, transfer


@torch.no_grad()
def fast_dllm_generate(model: torch.nn.Module, prompt: list[int], gen_length: int, block_length: int, steps: int,
                       mask_id: int, threshold: float | None = None, cache: str = "none") -> list[int]:
    """Fast-dLLM's ``generate`` (``cache="none"``), ``generate_with_prefix_cache`` and ``generate_with_dual_cache``.

    Every block's first step runs the whole sequence (``mask_index[:, end:] = 0``, topk over the whole sequence);
    later steps run the whole sequence again (none), ``x[start:]`` against the prefix's cached keys (prefix: topk
    over ``start..`` with the positions after the block zeroed) or the block alone against every other cached key
    (dual: topk over the block). A block ends when it has no mask left (the schedule's counts index the step).
    """
    x = torch.tensor(prompt + [mask_id] * gen_length)
    per_block = steps // (gen_length // block_length)
    for block in range(gen_length // block_length):
        start = len(prompt) + block * block_length
        end = start + block_length
        counts = llada_counts(int((x[start:end] == mask_id).sum()), per_block)
        step = 0
        while step == 0 or bool((x[start:end] == mask_id).any()):
            if step == 0 or cache == "none":
                logits, recorded = _logits(model, x, **({"return_cache": True} if cache != "none" else {}))
                if step == 0:
                    past = recorded
                mask = x == mask_id
                mask[end:] = False
                x0, transfer = fast_dllm_transfer(logits, mask, x, counts[step], threshold)
                x[transfer] = x0[transfer]
            elif cache == "prefix":
                logits, _ = _logits(model, x[start:], past=_prefix(past, start), past_offset=start)
                mask = x[start:] == mask_id
                mask[block_length:] = False
                x0, transfer = fast_dllm_transfer(logits, mask, x[start:], counts[step], threshold)
                x[start:][transfer] = x0[transfer]
            else:
                logits, _ = _logits(model, x[start:end], past=past, past_offset=start)
                mask = x[start:end] == mask_id
                x0, transfer = fast_dllm_transfer(logits, mask, x[start:end], counts[step], threshold)
                x[start:end][transfer] = x0[transfer]
            step += 1
    return x[len(prompt) :].tolist()


@torch.no_grad()
def dream_sample(model: torch.nn.Module, prompt: list[int], gen_length: int, steps: int, mask_id: int, alg: str,
                 eps: float = 1e-3, generator: torch.Generator | None = None) -> list[int]:
    """Dream's ``_sample`` (Dream-org ``generation_utils.py``, as shipped with Dream-v0-Instruct-7B), temperature 0.

    The model's logits are shifted right by one (position i read from hidden state i - 1); the project's native Dream
    does that inside ``forward``, so ``model(x).logits`` here already are ``_sample``'s shifted logits. Then
    ``sample_tokens`` on the masked rows: softmax in the logits' own dtype over the whole vocabulary (the official
    modeling does not upcast), ``confidence, x0 = probs.max(-1)``; ``topk_margin``: top-1 minus top-2 of the sorted
    probabilities; ``entropy``: ``sum(p * log(p + 1e-10))``. ``full_confidence`` in the logits' dtype, -inf off the
    masks, over the whole ``[1, L]`` sequence; ``k = int(m * (1 - s / t))`` on ``linspace(1, eps, steps + 1)`` (all
    at the last step); ``torch.topk(full_confidence, k)``.

    ``origin``: each masked position is committed when its uniform draw is below ``1 - s / t``. Dream draws for the
    masked positions only; this draws for the whole window from ``generator`` (the same law, and the numbers the
    project's loop draws with its seeded generator for one prompt).
    """
    x = torch.tensor([prompt + [mask_id] * gen_length])
    grid = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask = x == mask_id
        logits = model(x).logits
        probs = torch.softmax(logits[mask], -1)
        confidence, x0 = probs.max(-1)
        if alg == "origin":
            share = 1 - grid[i + 1] / grid[i] if i < steps - 1 else 1
            draw = torch.rand((1, gen_length), generator=generator)
            chosen = torch.zeros_like(mask)
            chosen[:, len(prompt) :] = draw < share
            proposal = torch.full_like(x, mask_id)
            proposal[mask] = x0
            chosen &= mask
            x[chosen] = proposal[chosen]
            continue
        if alg == "topk_margin":
            ordered = probs.sort(-1, descending=True).values
            confidence = ordered[:, 0] - ordered[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        masked = mask.sum() / mask.shape[0]
        k = int(masked * (1 - grid[i + 1] / grid[i])) if i < steps - 1 else int(masked)
        full = torch.full(x.shape, NEG_INF, dtype=logits.dtype)
        full[mask] = confidence
        if k > 0:
            chosen = torch.topk(full, k).indices
            proposal = torch.full_like(x, mask_id)
            proposal[mask] = x0
            x[0, chosen[0]] = proposal[0, chosen[0]]
    return x[0, len(prompt) :].tolist()


def _filter_accepts(small_model: torch.nn.Module, x0_p_block: torch.Tensor, block_length: int,
                    threshold: float) -> torch.Tensor:
    """Learn2PD's small model on the block's x0_p (every block position, committed or not) cast to float32; a block
    cut short by a truncation is zero-padded to the model's input width. Returns sigmoid > threshold per kept
    position."""
    features = torch.zeros(block_length)
    features[: len(x0_p_block)] = x0_p_block.float()
    logits = small_model(features[None, :, None])[0]
    return (torch.sigmoid(logits.float()) > threshold)[: len(x0_p_block)]


@torch.no_grad()
def learn2pd_generate(model: torch.nn.Module, prompt: list[int], gen_length: int, block_length: int, steps: int,
                      mask_id: int, eos_id: int, small_model: torch.nn.Module | None = None,
                      threshold: float = 0.9) -> list[int]:
    """Learn2PD's ``generate_predict_eot`` (``small_model=None``) and ``generate_l2p_eot`` (its ``llada/generate.py``).

    As LLaDA's ``generate`` (softmax in the logits' dtype), plus EoTP: before the step's commit, the masked
    positions anywhere in the sequence whose prediction is end-of-text give ``end_token_conf = x0_p`` there; after
    the commit the sequence is truncated after the filter's first accepted end-of-text in the block, else after the
    first maximum of ``end_token_conf``. predict_eot runs a fixed number of steps per block (stopping when nothing is
    masked); l2p_eot loops while the block has masks, committing the filter's acceptances besides the schedule's
    top-k.
    """
    x = torch.tensor(prompt + [mask_id] * gen_length)
    per_block = steps // (gen_length // block_length)
    for block in range(gen_length // block_length):
        start = len(prompt) + block * block_length
        end = start + block_length
        counts = llada_counts(int((x[start:end] == mask_id).sum()), per_block)
        i = 0
        while (i < per_block if small_model is None else bool((x[start:end] == mask_id).any())):
            mask = x == mask_id
            if not bool(mask.any()):
                break
            logits, _ = _logits(model, x)
            x0 = logits.argmax(-1)
            x0_p = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
            transfer = torch.zeros_like(mask)
            if small_model is not None:
                transfer[start:end] = _filter_accepts(small_model, x0_p[start:end], block_length, threshold)
                transfer &= mask
            filter_end = (x0 == eos_id) & transfer
            end_conf = torch.where((x0 == eos_id) & mask, x0_p, NEG_INF)
            x0_p[end:] = NEG_INF
            x0 = torch.where(mask, x0, x)
            transfer[torch.topk(torch.where(mask, x0_p, NEG_INF), counts[i]).indices] = True
            x[transfer] = x0[transfer]
            if bool(filter_end.any()):
                x = x[: int(filter_end.int().argmax()) + 1]
            elif bool((end_conf > NEG_INF).any()):
                x = x[: int(end_conf.argmax()) + 1]
            i += 1
    return _window(x, len(prompt), gen_length, eos_id)


def learn2pd_transfer(logits: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, count: int,
                      small_model: torch.nn.Module, threshold: float, block: slice, block_length: int,
                      eos_id: int) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Learn2PD's cached ``get_transfer_index``: float64 softmax; the filter on the block's x0_p; the end-of-text
    position (the filter's first accepted one, else the first most confident masked end-of-text, looked for where
    ``mask`` is set: the current block only) chosen before the schedule's ``topk`` is added."""
    x0 = logits.argmax(-1)
    x0_p = torch.softmax(logits.double(), -1).gather(-1, x0[:, None])[:, 0]
    transfer = torch.zeros_like(mask)
    transfer[block] = _filter_accepts(small_model, x0_p[block], block_length, threshold)
    transfer &= mask
    filter_end = (x0 == eos_id) & transfer
    end_conf = torch.where((x0 == eos_id) & mask, x0_p, NEG_INF)
    position = None
    if bool(filter_end.any()):
        position = int(filter_end.int().argmax())
    elif bool((end_conf > NEG_INF).any()):
        position = int(end_conf.argmax())
    x0 = torch.where(mask, x0, x)
    transfer[torch.topk(torch.where(mask, x0_p, NEG_INF), count).indices] = True
    return x0, transfer, position


@torch.no_grad()
def learn2pd_prefix_cache(model: torch.nn.Module, prompt: list[int], gen_length: int, block_length: int, steps: int,
                          mask_id: int, eos_id: int, small_model: torch.nn.Module, threshold: float) -> list[int]:
    """Learn2PD's ``generate_with_prefix_cache(model, small_model, accept_thres, ...)``: Fast-dLLM's prefix cache
    with the filter and EoTP of :func:`learn2pd_transfer`; the truncation follows the commit; a block that starts
    beyond the (truncated) sequence ends the decode."""
    x = torch.tensor(prompt + [mask_id] * gen_length)
    per_block = steps // (gen_length // block_length)
    for block in range(gen_length // block_length):
        start = len(prompt) + block * block_length
        if start >= len(x):
            break
        end = start + block_length
        counts = llada_counts(int((x[start:end] == mask_id).sum()), per_block)
        logits, cache = _logits(model, x, return_cache=True)
        mask = x == mask_id
        mask[end:] = False
        x0, transfer, position = learn2pd_transfer(logits, mask, x, counts[0], small_model, threshold,
                                                   slice(start, end), block_length, eos_id)
        x[transfer] = x0[transfer]
        if position is not None:
            x = x[: position + 1]
        past, i = _prefix(cache, start), 1
        while bool((x[start:end] == mask_id).any()):
            logits, _ = _logits(model, x[start:], past=past, past_offset=start)
            mask = x[start:] == mask_id
            mask[block_length:] = False
            x0, transfer, position = learn2pd_transfer(logits, mask, x[start:], counts[i], small_model, threshold,
                                                       slice(0, block_length), block_length, eos_id)
            x[start:][transfer] = x0[transfer]
            if position is not None:
                x = x[: start + position + 1]
            i += 1
    return _window(x, len(prompt), gen_length, eos_id)


def first_difference(ours: list[int], reference: list[int]) -> int | None:
    """The first window position where two decodes differ (None if they agree)."""
    for j, (a, b) in enumerate(zip(ours, reference)):
        if a != b:
            return j
    return None if len(ours) == len(reference) else min(len(ours), len(reference))

