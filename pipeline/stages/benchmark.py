"""Stage ``benchmark``: wall-clock speed as the papers report it, for every setting of the experiment's grid.

In one process and on the same test prompts, each setting (policy x cache x EoTP x gen length) is warmed up, then
timed at batch size 1 (per-prompt latency p50/p90, tokens per second, and the share of time spent outside the
model's forward passes: the loop's own overhead) and at ``benchmark.batch_size`` (throughput). Ratios are against
vanilla decoding without a cache at the same gen length. Writes ``benchmark.json`` and ``benchmark.md`` and prints
the table; the oracle's reference outputs are computed once per gen length, outside the timings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts.store import Artifact, ArtifactSpec, code_digest
from pipeline.configuration.command import expand_grid, trains_filter, trains_policy
from pipeline.decoding.loop import DecodeOutput
from pipeline.decoding.policies import build_policy
from pipeline.decoding.reference import llada_generate
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation.setting import reference_outputs, run_decode, summarize
from pipeline.runtime.tracking import tracking
from pipeline.stages import train_filter, train_policy
from pipeline.stages.context import DECODING_CODE, StageContext, model_identity, plain
from pipeline.stages.sweep import describe, vanilla_of
from pipeline.tasks.prompts import encode_prompt

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "models/filter.py", "pipeline/stages/benchmark.py")


def settings_of(ctx: StageContext) -> list[DecodeSettings]:
    """The grid's settings, with vanilla without a cache added for each gen length (the reference of the ratios)."""
    settings = expand_grid(ctx.cfg)
    for setting in list(settings):
        base = vanilla_of(setting).replace(cache="none")
        if base.identity() not in [s.identity() for s in settings]:
            settings.insert(0, base)
    return settings


def spec(ctx: StageContext, settings: list[DecodeSettings]) -> ArtifactSpec:
    b = ctx.cfg.benchmark
    inputs = {"filter": train_filter.spec(ctx).key} if trains_filter(settings) else {}
    if trains_policy(settings):
        inputs["policy"] = train_policy.spec(ctx).key
    return ArtifactSpec("benchmark", code_digest(CODE), {
        "settings": [s.identity() for s in settings], "model": model_identity(ctx.cfg.model),
        "task": plain(ctx.cfg.task), "split": b.split, "num_prompts": b.num_prompts, "warmup": b.warmup,
        "batch_size": b.batch_size, "reference": b.reference, "device": ctx.device.type,
        "threads": torch.get_num_threads(),
    }, inputs, ctx.labels())


def measure(ctx: StageContext, setting: DecodeSettings, examples: list, prompts: list[list[int]],
            references: torch.Tensor | None) -> dict[str, Any]:
    """One setting: warm-up, batch-1 latency and overhead, then batched throughput."""
    loaded, b = ctx.loaded, ctx.cfg.benchmark
    policy = build_policy(setting, loaded.device)
    one = setting.replace(batch_size=1)
    if b.warmup:
        run_decode(loaded, prompts[: b.warmup], policy, one, None if references is None else references[: b.warmup])
    single = run_decode(loaded, prompts, policy, one, references)
    batched = b.batch_size and run_decode(loaded, prompts, policy, setting.replace(batch_size=b.batch_size),
                                          references)
    result = summarize(loaded, ctx.task, examples, single)
    tokens = sum(row["tokens"] for row in result["rows"])
    latency = sorted(single.sample_seconds)
    return {
        "label": describe(setting), "policy": setting.policy, "cache": setting.cache, "eotp": setting.eotp,
        "gen_length": setting.gen_length, "accuracy": result["metrics"]["accuracy"],
        "nfe_mean": result["metrics"]["nfe_mean"],
        "latency_p50_s": statistics.median(latency), "latency_p90_s": latency[min(len(latency) - 1,
                                                                                 int(0.9 * len(latency)))],
        "tokens_per_s_batch1": tokens / single.wall_time,
        "overhead_batch1": 1.0 - single.forward_seconds / single.wall_time,
        "setting": dataclasses.asdict(setting), "windows": single.tokens,
        **({f"tokens_per_s_batch{b.batch_size}": tokens / batched.wall_time,
            "same_outputs_batched": bool(torch.equal(single.tokens, batched.tokens))} if batched else {}),
    }


def measure_reference(ctx: StageContext, base: DecodeSettings, examples: list, prompts: list[list[int]]
                      ) -> dict[str, Any]:
    """LLaDA's ``generate`` as plainly re-stated (:mod:`pipeline.decoding.reference`): one prompt at a time, the
    vanilla setting ``base``'s window and steps. Its outputs must equal the engine's vanilla ones."""
    loaded, b = ctx.loaded, ctx.cfg.benchmark

    def generate(prompt: list[int]) -> tuple[torch.Tensor, int]:
        tokens, forwards = llada_generate(loaded.model, prompt, base.gen_length, base.block_length,
                                          base.total_steps, loaded.mask_id)
        return tokens.cpu(), forwards

    for prompt in prompts[: b.warmup]:
        generate(prompt)
    windows, nfe, seconds = [], [], []
    for prompt in prompts:
        tic = time.perf_counter()
        tokens, forwards = generate([int(t) for t in prompt])
        seconds.append(time.perf_counter() - tic)
        windows.append(tokens)
        nfe.append(forwards)
    out = DecodeOutput(torch.stack(windows), torch.tensor(nfe), sum(seconds), seconds)
    result = summarize(loaded, ctx.task, examples, out)
    tokens = sum(row["tokens"] for row in result["rows"])
    latency = sorted(seconds)
    return {
        "label": f"LLaDA generate (re-stated, one prompt at a time) L={base.gen_length}", "policy": "reference",
        "cache": "none", "eotp": False, "gen_length": base.gen_length, "accuracy": result["metrics"]["accuracy"],
        "nfe_mean": result["metrics"]["nfe_mean"], "latency_p50_s": statistics.median(latency),
        "latency_p90_s": latency[min(len(latency) - 1, int(0.9 * len(latency)))],
        "tokens_per_s_batch1": tokens / out.wall_time, "overhead_batch1": None, "windows": out.tokens,
        **({f"tokens_per_s_batch{b.batch_size}": None} if b.batch_size else {}),
    }


def with_ratios(rows: list[dict[str, Any]], batch_size: int | None) -> list[dict[str, Any]]:
    """Each row's speed over vanilla without a cache at its gen length."""
    for row in rows:
        base = next(r for r in rows if r["policy"] == "vanilla" and r["cache"] == "none" and not r["eotp"]
                    and r["gen_length"] == row["gen_length"])
        row["latency_speedup"] = base["latency_p50_s"] / row["latency_p50_s"]
        row["tokens_per_s_ratio_batch1"] = row["tokens_per_s_batch1"] / base["tokens_per_s_batch1"]
        if batch_size:
            key = f"tokens_per_s_batch{batch_size}"
            row[f"tokens_per_s_ratio_batch{batch_size}"] = None if row[key] is None else \
                row[key] / base["tokens_per_s_batch1"]
    return rows


def markdown(rows: list[dict[str, Any]], batch_size: int | None, device: str) -> str:
    """The table; without a batched run (``benchmark.batch_size=null``) its two columns are left out."""
    batched = (f"tokens/s (b={batch_size})", f"speedup (tokens/s, b={batch_size})") if batch_size else ()
    header = ["setting", "accuracy", "NFE", "latency p50 / p90 (ms)", "tokens/s (b=1)", *batched[:1],
              "speedup (latency)", "speedup (tokens/s, b=1)", *batched[1:], "overhead (b=1)"]
    lines = [f"Batch-1 latency and throughput on {device}; ratios against vanilla without a cache (batch 1).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def shown(value: float | None, form: str) -> str:
        return "-" if value is None else form.format(value)

    for r in rows:
        cells = [r["label"], f"{100 * r['accuracy']:.1f}%", f"{r['nfe_mean']:.1f}",
                 f"{1000 * r['latency_p50_s']:.1f} / {1000 * r['latency_p90_s']:.1f}",
                 f"{r['tokens_per_s_batch1']:.0f}"]
        if batch_size:
            cells.append(shown(r[f"tokens_per_s_batch{batch_size}"], "{:.0f}"))
        cells += [f"{r['latency_speedup']:.2f}x", f"{r['tokens_per_s_ratio_batch1']:.2f}x"]
        if batch_size:
            cells.append(shown(r[f"tokens_per_s_ratio_batch{batch_size}"], "{:.2f}x"))
        cells.append(shown(r["overhead_batch1"] and 100 * r["overhead_batch1"], "{:.1f}%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(ctx: StageContext, items: list[int] | None = None) -> Artifact:
    """Each setting's latency and throughput at batch 1 (and the batched rate), with the filter and policy the plan's
    upstream nodes trained."""
    cfg = ctx.cfg
    settings, b = settings_of(ctx), cfg.benchmark
    trained = ctx.upstream(train_filter.spec(ctx)) if trains_filter(settings) else None
    tuned = ctx.upstream(train_policy.spec(ctx)) if trains_policy(settings) else None
    saved = {"filter": trained and trained.path / "filter", "rl_filter": tuned and tuned.path / "policy"}
    settings = [s.replace(filter_path=str(saved[s.policy])) if s.learned and not s.filter_path else s
                for s in settings]
    s = spec(ctx, settings)

    def compute(work: Path) -> dict[str, Any]:
        examples = ctx.task.examples(b.split, b.num_prompts)
        prompts = [encode_prompt(ctx.loaded.tokenizer, ex, ctx.task.chat_template) for ex in examples]
        references: dict[tuple, torch.Tensor] = {}
        rows = []
        for setting in settings:
            refs = None
            if setting.needs_references:
                window = (setting.gen_length, setting.block_length, setting.steps)
                if window not in references:
                    references[window] = reference_outputs(ctx.loaded, prompts, setting).tokens
                refs = references[window]
            rows.append(measure(ctx, setting, examples, prompts, refs))
            r = rows[-1]
            if b.reference and setting.policy == "vanilla" and setting.cache == "none" and not setting.eotp:
                reference = measure_reference(ctx, setting, examples, prompts)
                reference["same_outputs_as_vanilla"] = bool(torch.equal(reference.pop("windows"), r["windows"]))
                rows.append(reference)
            log.info("benchmark %s: accuracy %.3f, NFE %.1f, latency p50 %.1f ms, %.0f tokens/s at batch 1, "
                     "overhead %.1f%%", r["label"], r["accuracy"], r["nfe_mean"], 1000 * r["latency_p50_s"],
                     r["tokens_per_s_batch1"], 100 * r["overhead_batch1"])
        for r in rows:
            r.pop("windows", None)
        rows = with_ratios(rows, b.batch_size)
        (work / "benchmark.json").write_text(json.dumps(rows, indent=2))
        (work / "benchmark.md").write_text(markdown(rows, b.batch_size, describe_device(ctx)))
        return {"settings": len(rows), "device": describe_device(ctx)}

    inputs = {name: a for name, a in (("filter", trained), ("policy", tuned)) if a is not None}
    artifact = ctx.store.materialize(s, compute, force=ctx.forced("benchmark"), inputs=inputs)
    rows = json.loads((artifact.path / "benchmark.json").read_text())
    with tracking(cfg, "benchmark", artifact.key) as tracker:
        tracker.log_table("benchmark/table", [{k: v for k, v in r.items() if k != "setting"} for r in rows])
    print((artifact.path / "benchmark.md").read_text())
    print(f"benchmark table: {artifact.path / 'benchmark.md'}")
    return artifact


def describe_device(ctx: StageContext) -> str:
    dtype = next(ctx.loaded.model.parameters()).dtype
    if ctx.device.type == "cuda":
        return f"{torch.cuda.get_device_name(ctx.device)} ({dtype})"
    return f"CPU ({cpu_name()}), {torch.get_num_threads()} thread(s) ({dtype})"


def cpu_name() -> str:
    """The processor's model name as the system reports it (Linux), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
