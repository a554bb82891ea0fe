"""Stage ``sweep``: evaluate decode settings on the test split, one result artifact per setting.

In a single run the experiment's grid (``sweep.grid`` x ``sweep.gen_lengths``) is evaluated; in a Hydra
multirun (``-m decode=filter decode.threshold=0.5,0.9``) each job evaluates its own ``decode`` setting. Either
way every setting is a typed :class:`DecodeSettings` and a content-addressed artifact, so settings shared by two
sweeps are computed once. The oracle reuses the vanilla result's outputs as references; the filter policy uses
the ``train_filter`` artifact and ``rl_filter`` the ``train_policy`` one. A result is recomputed when the filter
or references it read have changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts.store import (
    TIMING,
    Artifact,
    ArtifactSpec,
    Inputs,
    atomic_dir,
    code_digest,
    content_key,
    digests,
    folder_digest,
    write_json_atomic,
)
from pipeline.configuration.command import is_multirun, sweep_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation.setting import evaluate_setting, metrics_of
from pipeline.learning.trajectories import shard_name
from pipeline.runtime.tracking import tracking
from pipeline.stages import train_filter, train_policy
from pipeline.stages.context import DECODING_CODE, StageContext, model_identity, plain

log = logging.getLogger(__name__)
CODE = (*DECODING_CODE, "models/filter.py", "pipeline/stages/sweep.py")
TIMED = ("wall_time_s", "tokens_per_s")  # metrics read off the clock: in timing.json and the manifest's figures
SHARD_RECORD = "shard.json"  # what a shard was computed from, its prompts and its clock


def result_key_settings(ctx: StageContext, setting: DecodeSettings) -> dict[str, Any]:
    keep = {k: v for k, v in setting.identity().items() if k != "filter_path"}
    return {"decode": keep, "model": model_identity(ctx.cfg.model), "task": plain(ctx.cfg.task),
            "split": ctx.cfg.sweep.split, "num_prompts": ctx.cfg.sweep.num_prompts, "device": ctx.device.type}


def spec_for(ctx: StageContext, setting: DecodeSettings) -> ArtifactSpec:
    """The result artifact's identity, computed without decoding anything."""
    inputs: dict[str, str] = {}
    if setting.learned:
        inputs["filter"] = setting.filter_path or learned_stage(setting).spec(ctx).key
    if setting.needs_references:
        inputs["references"] = spec_for(ctx, vanilla_of(setting)).key
    return ArtifactSpec("sweep", code_digest(CODE), result_key_settings(ctx, setting), inputs, ctx.labels())


def learned_stage(setting: DecodeSettings):
    """The stage whose artifact a learned setting decodes with: train_filter (filter) or train_policy."""
    return train_policy if setting.policy == "rl_filter" else train_filter


def learned_folder(setting: DecodeSettings) -> str:
    return "policy" if setting.policy == "rl_filter" else "filter"


def vanilla_of(setting: DecodeSettings) -> DecodeSettings:
    """The vanilla setting whose outputs the oracle reproduces (same window, block and steps)."""
    return setting.replace(policy="vanilla", eotp=False)


def evaluate(ctx: StageContext, setting: DecodeSettings, shards: Iterable[int] | None = None) -> Artifact | None:
    """One setting's result artifact, computing upstream (vanilla references, the filter) as needed.

    With ``sweep.num_shards`` > 1 the prompts are decoded in shards (``shards``: which ones this call computes;
    None: all, in order) and merged once the last lands; None is returned while others are still missing."""
    spec = spec_for(ctx, setting)
    inputs: Inputs = {}
    if setting.learned:
        if setting.filter_path:
            inputs["filter"] = folder_digest(Path(setting.filter_path))
        else:
            trained = ctx.upstream(learned_stage(setting).spec(ctx))
            inputs["filter"] = trained
            setting = setting.replace(filter_path=str(trained.path / learned_folder(setting)))
    reference = evaluate(ctx, vanilla_of(setting), shards) if setting.needs_references else None
    if reference is not None:  # the oracle replays the vanilla tokens alone, not its timings
        inputs["references"] = reference_digest(reference)
    existing = ctx.store.load(spec)
    if existing is not None and (not ctx.forced("sweep") or spec.key in ctx.fresh) and \
            (reference is not None or not setting.needs_references) and ctx.store.is_current(existing, inputs):
        log.info("sweep %s: complete, reusing %s (nothing to compute)", spec.key, describe(setting))
        return existing
    if ctx.cfg.sweep.num_shards > 1:
        return sharded(ctx, spec, setting, inputs, existing, shards)

    def compute(work: Path) -> dict[str, Any]:
        references = torch.load(reference.path / "tokens.pt") if reference is not None else None
        examples = ctx.task.examples(ctx.cfg.sweep.split, ctx.cfg.sweep.num_prompts)
        result = evaluate_setting(ctx.loaded, ctx.task, examples, setting, progress=bool(ctx.cfg.progress),
                                  references=references)
        return write_result(work, setting, result["tokens"], result["rows"], result["metrics"])

    artifact = ctx.store.materialize(spec, compute, force=True, inputs=inputs)
    ctx.fresh.add(spec.key)
    return artifact


def write_result(work: Path, setting: DecodeSettings, tokens: torch.Tensor, rows: list[dict[str, Any]],
                 metrics: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A setting's files, the same whether it was decoded whole or in shards; returns the manifest's figures."""
    torch.save(tokens.clone(), work / "tokens.pt")  # a clone: a view would save the storage it views
    # what was decoded is the record; what the clock said (and where the filter lay) is kept beside it, so
    # identical runs give identical digests and a forced identical sweep leaves the aggregate current
    with open(work / "samples.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: v for k, v in row.items() if k != "seconds"}) + "\n" for row in rows)
    recorded = {k: v for k, v in dataclasses.asdict(setting).items() if k != "filter_path"}
    write_json_atomic(work / "result.json", {"setting": recorded,
                                             "metrics": {k: v for k, v in metrics.items() if k not in TIMED}})
    timing = {**{k: metrics[k] for k in TIMED}, "filter_path": setting.filter_path,
              "sample_seconds": [row["seconds"] for row in rows]}
    write_json_atomic(work / TIMING, timing if shards is None else {**timing, "shards": shards})
    log.info("sweep %s: accuracy %.3f, NFE mean %.1f, %.1f tokens/s", describe(setting), metrics["accuracy"],
             metrics["nfe_mean"], metrics["tokens_per_s"])
    return {**metrics, "policy": setting.policy, "label": describe(setting)}


def reference_digest(reference: Artifact) -> str:
    return reference.manifest.get("file_digests", {}).get("tokens.pt", reference.digest)


# ---- prompt shards ----------------------------------------------------------------------------------------------

def shard_bounds(ctx: StageContext, setting: DecodeSettings, index: int) -> tuple[int, int]:
    """The prompts ``[first, end)`` of shard ``index``: contiguous, cut at whole batches, so every batch (and with
    it every output) is the one an unsharded run decodes."""
    n, size, count = ctx.cfg.sweep.num_prompts, setting.batch_size, ctx.cfg.sweep.num_shards
    batches = -(-n // size)
    return min(index * batches // count * size, n), min((index + 1) * batches // count * size, n)


def sharded(ctx: StageContext, spec: ArtifactSpec, setting: DecodeSettings, inputs: Inputs,
            existing: Artifact | None, shards: Iterable[int] | None) -> Artifact | None:
    """Compute this call's shards (each under its own lock, skipped when already written from the same inputs),
    then merge them under the artifact's lock if they are all there. A shard written from other inputs (the
    filter or the vanilla outputs it replays changed) is recomputed, never merged."""
    count = ctx.cfg.sweep.num_shards
    work = shards_dir(ctx, spec)
    for index in range(count) if shards is None else shards:
        name = shard_name(index, count)
        with ctx.store.lock(spec, name):
            if (finished := ctx.store.finished_elsewhere(spec, existing)) is not None and \
                    ctx.store.is_current(finished, inputs):
                return finished
            wanted, references = shard_inputs(ctx, setting, inputs, index)
            if written_from(work / name, wanted) and not (ctx.forced("sweep") and spec.key not in ctx.fresh):
                log.info("sweep %s: %s %s already written, skipping", spec.key, describe(setting), name)
                continue
            shutil.rmtree(work / name, ignore_errors=True)  # written from other inputs: never merged
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_dir(work / name, lambda tmp, i=index, w=wanted, r=references:
                       decode_shard(ctx, setting, i, w, r, tmp))
            log.info("sweep %s: %s %s written", spec.key, describe(setting), name)
    with ctx.store.lock(spec):
        if (finished := ctx.store.finished_elsewhere(spec, existing)) is not None and \
                ctx.store.is_current(finished, inputs):
            return finished
        current = [i for i in range(count) if shard_is_current(ctx, setting, inputs, work / shard_name(i, count), i)]
        if len(current) < count:
            log.info("sweep %s: %s: %d of %d shards written; run the others to finish", spec.key, describe(setting),
                     len(current), count)
            return None
        if setting.needs_references and "references" not in inputs:  # its vanilla shards landed: merged now
            reference = evaluate(ctx, vanilla_of(setting), [])
            if reference is None:
                return None
            inputs = {**inputs, "references": reference_digest(reference)}
        figures = merge_shards(work, ctx.store.begin(spec), setting, count)
        artifact = ctx.store.finalize(spec, figures, inputs=inputs)
        shutil.rmtree(work)
    ctx.fresh.add(spec.key)
    return artifact


def shards_dir(ctx: StageContext, spec: ArtifactSpec) -> Path:
    """Where a sharded setting's shards wait for the merge: beside the artifact, removed once it is written."""
    return ctx.store.path(spec).with_name(spec.key + ".shards")


def shard_inputs(ctx: StageContext, setting: DecodeSettings, inputs: Inputs,
                 index: int) -> tuple[dict[str, str], torch.Tensor | None]:
    """What shard ``index`` is computed from (the filter's digest and the digest of the vanilla outputs it replays,
    its own rows of them), and those vanilla outputs (None for a setting that replays none)."""
    wanted = {k: v for k, v in digests(inputs).items() if k != "references"}
    references = shard_references(ctx, setting, index) if setting.needs_references else None
    if references is not None:
        wanted["references"] = tensor_digest(references)
    return wanted, references


def shard_references(ctx: StageContext, setting: DecodeSettings, index: int) -> torch.Tensor:
    """The vanilla outputs of shard ``index``'s prompts: from the merged vanilla result, else its shard."""
    vanilla = vanilla_of(setting)
    spec = spec_for(ctx, vanilla)
    for _ in range(2):  # a shard read while another task merges moves into the merged result under our feet
        if (merged := ctx.store.load(spec)) is not None:
            first, end = shard_bounds(ctx, vanilla, index)
            return torch.load(merged.path / "tokens.pt")[first:end]
        with contextlib.suppress(FileNotFoundError):
            return torch.load(shards_dir(ctx, spec) / shard_name(index, ctx.cfg.sweep.num_shards)
                              / "tokens.pt")
    raise FileNotFoundError(f"the vanilla outputs of {shard_name(index, ctx.cfg.sweep.num_shards)} of "
                            f"{describe(vanilla)}")


def tensor_digest(tensor: torch.Tensor) -> str:
    return content_key({"shape": list(tensor.shape), "sha256": hashlib.sha256(tensor.numpy().tobytes()).hexdigest()})


def written_from(folder: Path, wanted: dict[str, str]) -> bool:
    """Whether the shard in ``folder`` is written, from the inputs ``wanted``."""
    record = folder / SHARD_RECORD
    return record.exists() and json.loads(record.read_text()).get("inputs") == wanted


def shard_is_current(ctx: StageContext, setting: DecodeSettings, inputs: Inputs, folder: Path, index: int) -> bool:
    """Whether shard ``index`` (in ``folder``) is written, from the inputs it would be computed from now."""
    if not (folder / SHARD_RECORD).exists():
        return False
    try:
        wanted, _ = shard_inputs(ctx, setting, inputs, index)
    except FileNotFoundError:  # the vanilla shard it replays is gone: so is the reason to keep it
        return False
    return written_from(folder, wanted)


def decode_shard(ctx: StageContext, setting: DecodeSettings, index: int, wanted: dict[str, str],
                 references: torch.Tensor | None, tmp: Path) -> None:
    first, end = shard_bounds(ctx, setting, index)
    examples = ctx.task.examples(ctx.cfg.sweep.split, ctx.cfg.sweep.num_prompts)[first:end]
    if examples:
        result = evaluate_setting(ctx.loaded, ctx.task, examples, setting, progress=bool(ctx.cfg.progress),
                                  references=references, first=first)
        tokens, rows, seconds = result["tokens"], result["rows"], result["metrics"]["wall_time_s"]
    else:  # more shards than batches: an empty shard
        tokens, rows, seconds = torch.empty(0, setting.gen_length, dtype=torch.long), [], 0.0
    torch.save(tokens.clone(), tmp / "tokens.pt")
    with open(tmp / "rows.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    write_json_atomic(tmp / SHARD_RECORD, {"inputs": wanted, "first": first, "end": end, "wall_time_s": seconds})


def merge_shards(shards: Path, work: Path, setting: DecodeSettings, count: int) -> dict[str, Any]:
    """The shards written into ``work`` as the one result an unsharded run writes (same files and records; the
    clock summed, and each shard's kept in the timing)."""
    folders = [shards / shard_name(i, count) for i in range(count)]
    records = [json.loads((folder / SHARD_RECORD).read_text()) for folder in folders]
    tokens = torch.cat([torch.load(folder / "tokens.pt") for folder in folders])
    rows = [json.loads(line) for folder in folders for line in (folder / "rows.jsonl").read_text().splitlines()]
    seconds = sum(record["wall_time_s"] for record in records)
    timings = [{"shard": i, "prompts": [r["first"], r["end"]], "wall_time_s": r["wall_time_s"]}
               for i, r in enumerate(records)]
    return write_result(work, setting, tokens, rows, metrics_of(rows, seconds), timings)


def describe(setting: DecodeSettings | dict[str, Any]) -> str:
    s = setting if isinstance(setting, dict) else dataclasses.asdict(setting)
    parts = [s["policy"]]
    if s["policy"] in ("threshold", "filter", "rl_filter", "klass", "local_leap", "credit"):
        parts.append(f"t={s['threshold'] if s['threshold'] is not None else 'validated'}")
    if s["policy"] == "rl_filter":
        parts.append(f"s={s['speed'] if s.get('speed') is not None else 'validated'}")
    if s["policy"] == "klass":
        parts.append(f"kl={s['kl_bound']}")
    if s["policy"] == "entropy_bounded":
        parts.append(f"gamma={s['gamma']}")
    if s["policy"] == "factor":
        parts.append(f"f={s['factor']}" + (" ref" if s.get("factor_rule") == "reference" else ""))
    if s.get("eotp"):
        parts.append("eotp" if s.get("eotp_rule", "committed") == "committed" else f"eotp-{s['eotp_rule']}")
    if s.get("cache", "none") != "none":
        parts.append(f"{s['cache']}-cache")
    return " ".join(parts) + f" L={s['gen_length']}"


def run(ctx: StageContext, items: list[int] | None = None) -> list[Artifact]:
    """The command's settings, each evaluated or reused; the filter and policy they decode with come from the
    plan's upstream nodes. ``items``: the plan node's pieces, ``setting * sweep.num_shards + shard`` (a setting's
    index in the grid and one of its prompt shards; None: all). Returns the settings' complete results: a sharded
    setting whose other shards are still to land elsewhere has none yet."""
    settings = sweep_settings(ctx.cfg, is_multirun())
    count = ctx.cfg.sweep.num_shards
    chosen: dict[int, list[int]] = {}
    for item in range(len(settings) * count) if items is None else items:
        index, shard = divmod(item, count)
        chosen.setdefault(index, []).append(shard)
    for index in chosen:  # the filter and policy are read before any result is written (reuse_only names them)
        if settings[index].learned and not settings[index].filter_path:
            ctx.upstream(learned_stage(settings[index]).spec(ctx))
    results = []
    identity = {"settings": [settings[i].identity() for i in chosen]}
    if count > 1:
        identity["shards"] = list(chosen.values())
    with tracking(ctx.cfg, "sweep", content_key(identity)) as tracker:
        for index, shards in chosen.items():
            if (result := evaluate(ctx, settings[index], shards)) is not None:
                results.append(result)
        rows = [{"label": r.figures["label"], **{k: v for k, v in r.figures.items() if isinstance(v, (int, float))}}
                for r in results]
        tracker.log_table("sweep/results", rows)
    return results
