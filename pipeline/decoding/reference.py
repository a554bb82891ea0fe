"""An independent, plain re-statement of LLaDA's reference ``generate`` (batch size 1, no padding, low-confidence
remasking at temperature 0), written from the published algorithm line by line and without the project's helpers:
the argmax over the whole vocabulary and the softmax in the model's own dtype, as LLaDA's ``generate.py`` takes them.

The tests check the engine's vanilla policy against it token for token, and ``stage=benchmark`` with
``benchmark.reference=true`` times it beside the engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def llada_generate(model, prompt: list[int], gen_length: int, block_length: int, steps: int, mask_id: int):
    device = next(model.parameters()).device
    x = torch.tensor([prompt + [mask_id] * gen_length], device=device)
    start = len(prompt)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    forwards = 0
    for block in range(num_blocks):
        block_start = start + block * block_length
        block_end = block_start + block_length
        masks_in_block = int((x[0, block_start:block_end] == mask_id).sum())
        counts = [masks_in_block // steps_per_block] * steps_per_block
        for i in range(masks_in_block % steps_per_block):
            counts[i] += 1
        for i in range(steps_per_block):
            is_mask = x[0] == mask_id
            logits = model(x).logits[0]
            forwards += 1
            predicted = logits.argmax(-1)
            prob = F.softmax(logits, dim=-1).gather(-1, predicted[:, None]).squeeze(-1)  # in the model's dtype
            prob[block_end:] = float("-inf")
            confidence = torch.where(is_mask, prob, torch.tensor(float("-inf"), device=device))
            chosen = torch.topk(confidence, counts[i]).indices
            x[0, chosen] = predicted[chosen]
    return x[0, start:], forwards
