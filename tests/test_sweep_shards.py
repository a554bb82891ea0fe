"""A sweep setting decoded in prompt shards (``sweep.num_shards``): each shard a resumable piece, as a cluster array
task computes it, merged into the very artifact an unsharded run writes; a shard computed from other inputs is
recomputed, never merged; the plan gives each shard of a setting its own task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.configuration.command import expand_grid
from pipeline.execution import plan, slurm
from pipeline.stages import sweep
from pipeline.stages.context import StageContext
from tests.conftest import compose_config
from tests.shared_runs import seed
from tests.test_cli import run_cli

SHARDS = 4
MICRO = ["+experiment=micro", "progress=false", "decode.batch_size=4"]  # 16 prompts: four batches, four shards


def results(out: Path) -> dict[str, dict]:
    """Each result's manifest record, by key: what a rerun or a reader sees of it (the clock left out)."""
    found = {}
    for manifest in (out / "artifacts" / "sweep").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        found[m["key"]] = {"digest": m["digest"], "files": m["file_digests"], "inputs": m["input_digests"],
                           "figures": {k: v for k, v in m["figures"].items() if k not in sweep.TIMED}}
    return found


@pytest.fixture(scope="module")
def upstream(micro_pipeline, tmp_path_factory) -> Path:
    """The micro experiment's trajectories and filter, to copy from."""
    return seed(tmp_path_factory.mktemp("upstream"), micro_pipeline[0])


@pytest.fixture(scope="module")
def unsharded(upstream, tmp_path_factory) -> dict[str, dict]:
    out = seed(tmp_path_factory.mktemp("unsharded"), upstream)
    result = run_cli(*MICRO, "stage=sweep", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return results(out)


def test_a_sharded_sweep_writes_the_results_an_unsharded_one_does(upstream, unsharded, tmp_path):
    out = seed(tmp_path / "out", upstream)
    result = run_cli(*MICRO, "stage=sweep", f"sweep.num_shards={SHARDS}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(unsharded) == len(expand_grid(compose_config(MICRO))) == 5
    assert results(out) == unsharded, "same keys, files, inputs and figures, the oracle and the filter's included"
    assert not list((out / "artifacts" / "sweep").glob("*.shards")), "the shards go once merged"
    timing = json.loads(next((out / "artifacts" / "sweep").glob("*/timing.json")).read_text())
    assert [s["prompts"] for s in timing["shards"]] == [[0, 4], [4, 8], [8, 12], [12, 16]]
    assert timing["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in timing["shards"]))
    assert len(timing["sample_seconds"]) == 16


def sharded_context(out: Path) -> StageContext:
    return StageContext(compose_config([*MICRO, "stage=sweep", f"sweep.num_shards={SHARDS}", f"output_dir={out}"]))


def test_array_tasks_shards_resume_alone_and_a_stale_shard_is_recomputed(upstream, unsharded, tmp_path, capsys):
    out = seed(tmp_path / "out", upstream)
    ctx = sharded_context(out)
    settings = sweep.sweep_settings(ctx.cfg, False)
    vanilla, oracle = (next(i for i, s in enumerate(settings) if s.policy == p) for p in ("vanilla", "egp"))
    # one array task: shard 1 of the vanilla decode and of the oracle replaying it; nothing is complete yet
    assert sweep.run(ctx, [vanilla * SHARDS + 1, oracle * SHARDS + 1]) == []
    shards = {i: sweep.shards_dir(ctx, sweep.spec_for(ctx, settings[i])) / f"shard-00001-of-0000{SHARDS}"
              for i in (vanilla, oracle)}
    replayed = torch.load(shards[vanilla] / "tokens.pt")
    record = json.loads((shards[oracle] / sweep.SHARD_RECORD).read_text())
    assert record["inputs"] == {"references": sweep.tensor_digest(replayed)}, "the oracle shard names what it replays"
    assert (record["first"], record["end"]) == (4, 8)

    node = {n.name: n for n in plan.plan(ctx)}["sweep"]
    assert (node.done, node.total) == (2, SHARDS * len(node.keys))
    tasks = [[(settings[i // SHARDS].policy, i % SHARDS) for i in part] for part in node.parts]
    assert [("vanilla", 1)] not in tasks and [("vanilla", 0), ("egp", 0)] in tasks, \
        "a written shard is not planned again; an oracle shard follows its vanilla shard in one task"
    slurm.status(ctx.cfg)
    assert f"(0/{len(node.keys)} settings, 2/{node.total} shards)" in capsys.readouterr().out

    record["inputs"]["references"] = "from-other-vanilla-outputs"
    (shards[oracle] / sweep.SHARD_RECORD).write_text(json.dumps(record))
    result = run_cli(*MICRO, "stage=sweep", f"sweep.num_shards={SHARDS}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vanilla L=32 shard-00001-of-00004 already written, skipping" in result.stderr
    assert "egp L=32 shard-00001-of-00004 written" in result.stderr, "the stale shard is recomputed"
    assert results(out) == unsharded
