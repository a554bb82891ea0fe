"""Evaluating one decode setting on a task split: accuracy, NFE and speed, with per-sample rows.

The sweep stage and the ``evaluate`` stage both call :func:`evaluate_setting`; the oracle's reference outputs
come from a vanilla decode with the same window, block and steps.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from pipeline.decoding.loop import DecodeOutput, decode
from pipeline.decoding.policies import Vanilla, build_policy
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import Policy
from pipeline.modeling.loading import LoadedModel
from pipeline.tasks.base import Example, Task
from pipeline.tasks.prompts import decode_answer, encode_prompt


def run_decode(loaded: LoadedModel, prompts: list[list[int]], policy: Policy, settings: DecodeSettings,
               references: torch.Tensor | None = None, observer=None, progress: bool = False,
               description: str = "decode", track_history: bool = False) -> DecodeOutput:
    if not loaded.honours_attention_mask:
        settings = settings.replace(batch_size=1)  # left padding would change this model's outputs
    return decode(loaded.model, prompts, policy, settings, loaded.mask_id, loaded.eos_id, references=references,
                  observer=observer, device=loaded.device, max_context=loaded.max_context, progress=progress,
                  description=description, end_ids=loaded.end_ids, track_history=track_history)


def reference_outputs(loaded: LoadedModel, prompts: list[list[int]], settings: DecodeSettings,
                      progress: bool = False) -> DecodeOutput:
    """The model's own vanilla output: what the oracle reproduces and what trajectory labels compare to."""
    return run_decode(loaded, prompts, Vanilla(), dataclasses.replace(settings, eotp=False), progress=progress,
                      description="vanilla reference")


def evaluate_setting(loaded: LoadedModel, task: Task, examples: list[Example], settings: DecodeSettings,
                     progress: bool = False, references: torch.Tensor | None = None, first: int = 0) -> dict:
    """Decode ``examples`` under one setting; returns metrics, per-sample rows and the generated windows.
    ``first``: the index of ``examples[0]`` in its split (a sweep shard's rows carry their place in the whole)."""
    policy = build_policy(settings, loaded.device)
    prompts = [encode_prompt(loaded.tokenizer, ex, task.chat_template) for ex in examples]
    if policy.needs_references and references is None:
        references = reference_outputs(loaded, prompts, settings, progress).tokens
    out = run_decode(loaded, prompts, policy, settings, references, progress=progress, description=policy.name)
    return summarize(loaded, task, examples, out, first)


def summarize(loaded: LoadedModel, task: Task, examples: list[Example], out: DecodeOutput, first: int = 0) -> dict:
    rows = sample_rows(loaded, task, examples, out, first)
    return {"metrics": metrics_of(rows, out.wall_time), "rows": rows, "tokens": out.tokens}


def sample_rows(loaded: LoadedModel, task: Task, examples: list[Example], out: DecodeOutput,
                first: int = 0) -> list[dict]:
    """One row per sample: what was generated, its score, its passes and tokens, and its share of the clock."""
    windows = out.tokens.tolist()
    texts = [decode_answer(loaded.tokenizer, window, loaded.end_ids) for window in windows]
    rows = []
    for i, (ex, window, text, score) in enumerate(zip(examples, windows, texts, task.score_many(examples, texts))):
        rows.append({
            "index": first + i, "prompt": ex.prompt, "reference": ex.answer, "generated": text,
            "exact_match": score.exact_match, "full_match": score.full_match, "nfe": int(out.nfe[i]),
            "tokens": sum(tok not in loaded.end_ids for tok in window), "seconds": out.sample_seconds[i],
            **score.metrics,
        })
    return rows


def metrics_of(rows: list[dict], wall_time: float) -> dict:
    """A setting's figures from its rows (all of them: a sharded setting's are merged first) and its decode time."""
    nfe = sorted(r["nfe"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {
        "num_samples": len(rows),
        "accuracy": sum(r["exact_match"] for r in rows) / len(rows),
        "full_match": sum(r["full_match"] for r in rows) / len(rows),
        "nfe_mean": statistics.fmean(nfe),
        "nfe_p50": statistics.median(nfe),
        "nfe_p90": nfe[min(len(nfe) - 1, int(0.9 * len(nfe)))],
        "wall_time_s": wall_time,
        "tokens_per_s": tokens / wall_time if wall_time > 0 else float("nan"),
        **{name: statistics.fmean(r[name] for r in rows) for name in rows[0] if "," in name},  # lm-eval's metrics
    }
