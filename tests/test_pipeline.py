"""The pipeline end to end through the CLI: artifacts, reuse, kills, multirun, W&B, and clear failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

import pytest

from pipeline.artifacts.store import ArtifactSpec, ArtifactStore
from pipeline.configuration.command import expand_grid
from pipeline.configuration.validation import validate
from pipeline.stages import sweep
from tests.standins import write_dream_official, write_llada_official
from tests.test_artifacts import copy_of
from tests.test_cli import run_cli
from tests.wandb_reader import summary_and_history

EXPERIMENTS = sorted(Path(p).stem for p in glob(str(Path(__file__).parents[1] / "conf" / "experiment" / "*.yaml")))


@pytest.fixture(scope="module")
def standin_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    """Tiny checkpoints in the official layout, as the experiments' native implementation reads them."""
    return {"llada": write_llada_official(root / "llada"), "dream": write_dream_official(root / "dream")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(compose_cfg, experiment, standin_models):
    family = compose_cfg([f"+experiment={experiment}"]).model.family
    local = [] if family == "embedded" else [f"model.path={standin_models[family]}"]  # weights are never here
    cfg = compose_cfg([f"+experiment={experiment}", *local])
    assert cfg.experiment_name == experiment
    reinforced = ["train_policy"] if any(s.policy == "rl_filter" for s in expand_grid(cfg)) else []
    assert validate(cfg) == ["trajectories", "train_filter", *reinforced, "sweep", "aggregate"]
    assert expand_grid(cfg), "an experiment sweeps at least one setting"
    if experiment.startswith("frontier_"):
        assert reinforced, "every frontier experiment compares the reinforced policy"


def test_the_grid_expands_lists_as_a_product(compose_cfg):
    cfg = compose_cfg(["+experiment=tiny"])
    settings = expand_grid(cfg)
    filters = [s for s in settings if s.policy == "filter"]
    assert len(filters) == 8 and {(s.threshold, s.eotp) for s in filters} == {
        (t, e) for t in (0.5, 0.7, 0.9, 0.97) for e in (False, True)}
    assert all(s.gen_length == 64 and s.block_length == 16 for s in settings)


def test_a_grid_expanded_again_follows_its_config_and_is_a_fresh_copy(compose_cfg):
    """The grid is expanded once per process for each decode and sweep config: another config gets its own, and
    a caller that changes its settings changes no later caller's."""
    first = expand_grid(compose_cfg(["+experiment=micro"]))
    first[0].gen_length = 999
    assert expand_grid(compose_cfg(["+experiment=micro"]))[0].gen_length == 32
    assert {s.gen_length for s in expand_grid(compose_cfg(["+experiment=micro", "sweep.gen_lengths=[16]"]))} == {16}
    # sweep.block_length follows decode.block_length by interpolation: the cache reads the resolved config
    assert {s.block_length for s in expand_grid(compose_cfg(["+experiment=micro", "decode.block_length=4"]))} == {4}


def test_validation_counts_each_task_s_own_split(compose_cfg):
    """Split sizes are counted once per process for each task: a task of other ranges gets its own count."""
    from pipeline.configuration.validation import split_size
    from pipeline.tasks import ChainedAddition

    small, large = ChainedAddition(max_steps=1), ChainedAddition(max_steps=4)
    assert split_size(small, "test") == small.split_size("test") < split_size(large, "test") == \
        large.split_size("test")


def artifacts(root: Path, stage: str) -> list[Path]:
    return [p.parent for p in (root / "artifacts" / stage).glob("*/manifest.json")]


@pytest.fixture(scope="module")
def micro_run(micro_pipeline, tmp_path_factory):
    """The session's micro run, and the same command run again on a copy of its output folder."""
    out, first = micro_pipeline
    copy = copy_of(out, tmp_path_factory.mktemp("micro"))
    second = run_cli("+experiment=micro", f"output_dir={copy}", "progress=false")
    assert second.returncode == 0, second.stderr[-4000:]
    return out, first, second


@pytest.mark.slow
def test_the_whole_pipeline_writes_every_artifact(micro_run):
    out, first, _ = micro_run
    (traj,) = artifacts(out, "trajectories")
    manifest = json.loads((traj / "manifest.json").read_text())
    assert manifest["figures"]["rows"] > 0 and 0 < manifest["figures"]["positive_rate"] < 1
    assert (traj / "shards" / "shard-00000-of-00001" / "dataset_info.json").exists()
    (trained,) = artifacts(out, "train_filter")
    assert (trained / "filter" / "filter.safetensors").exists()
    metrics = json.loads((trained / "manifest.json").read_text())["figures"]
    assert {"val/auroc", "val/precision", "val/recall", "val/fpr"} <= set(metrics)
    assert len(artifacts(out, "sweep")) == 5
    (agg,) = artifacts(out, "aggregate")
    for name in ("frontier.csv", "frontier.md", "frontier.png"):
        assert (agg / name).stat().st_size > 0
    assert first.stdout.startswith("| setting | accuracy |") and "frontier plot:" in first.stdout, \
        "stdout carries the results only"
    assert "GPU available" not in first.stderr, "Lightning's chatter is silenced"
    assert "INFO: " not in first.stderr, "Lightning's log lines once, through the run's own handler"


def sweep_results(out: Path) -> dict[str, dict]:
    results = {}
    for path in artifacts(out, "sweep"):
        data = json.loads((path / "result.json").read_text())
        results[sweep.describe(data["setting"])] = data["metrics"]
    return results


@pytest.mark.slow
def test_the_oracle_matches_vanilla_and_the_filter_saves_forward_passes(micro_run):
    results = sweep_results(micro_run[0])
    assert results["egp L=32"]["accuracy"] == results["vanilla L=32"]["accuracy"]
    assert results["egp L=32"]["nfe_mean"] < results["vanilla L=32"]["nfe_mean"]
    assert results["filter t=0.7 L=32"]["nfe_mean"] < results["vanilla L=32"]["nfe_mean"]
    assert results["filter t=0.7 eotp L=32"]["nfe_mean"] < results["filter t=0.7 L=32"]["nfe_mean"]


@pytest.mark.slow
def test_a_rerun_reuses_everything(micro_run):
    _, first, second = micro_run
    assert "computing in" in first.stderr
    assert "computing in" not in second.stderr
    assert "nothing to compute" in second.stderr


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_logged_metrics_table_and_plot(micro_run):
    out = micro_run[0]
    runs = {}
    for run_dir in sorted((out / "wandb").glob("offline-run-*")):
        summary, history, info = summary_and_history(run_dir)
        runs.setdefault(info["job_type"], []).append((summary, history, info))
    assert {"trajectories", "train_filter", "sweep", "aggregate"} <= set(runs)
    summary, history, info = runs["aggregate"][0]
    assert info["group"] == "micro" and info["name"].startswith("aggregate-")
    assert summary["frontier/table/_type"] == "table-file" and summary["frontier/table/nrows"] == 5
    assert summary["frontier/plot/_type"] == "image-file"
    assert "L32/vanilla_accuracy" in summary
    filter_summary = runs["train_filter"][0][0]
    assert 0 <= filter_summary["val/auroc"] <= 1
    assert sum("train/loss" in row for row in runs["train_filter"][0][1]) >= 10  # one per epoch


@pytest.mark.slow
def test_a_killed_stage_leaves_no_partial_artifact_and_the_rerun_finishes(tmp_path):
    args = ["+experiment=micro", "stage=trajectories", "trajectories.num_prompts=12", "trajectories.num_shards=4",
            "decode.gen_length=64", "decode.block_length=16", "logger=none", "progress=false"]
    killed = tmp_path / "killed"
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, f"output_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob("artifacts/trajectories/*.partial/shards/shard-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("artifacts/trajectories/*.partial")), "the kill came before any work started"
    assert not artifacts(killed, "trajectories"), "a killed run must not leave a complete-looking artifact"
    resumed = run_cli(*args, f"output_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already written, skipping" in resumed.stderr
    clean = run_cli(*args, f"output_dir={tmp_path / 'clean'}")
    assert clean.returncode == 0
    (a,), (b,) = artifacts(killed, "trajectories"), artifacts(tmp_path / "clean", "trajectories")
    assert a.name == b.name
    figures = [json.loads((p / "manifest.json").read_text())["figures"] for p in (a, b)]
    timing = ("seconds", "forward_seconds", "seconds_over_forward", "minutes_per_1000_prompts")  # differ per run
    assert [{k: v for k, v in f.items() if k not in timing} for f in figures][0] == \
        {k: v for k, v in figures[1].items() if k not in timing}


def test_a_failed_computation_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path)
    spec = ArtifactSpec("demo", "code", {"x": 1})

    def explode(work: Path) -> dict:
        (work / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.materialize(spec, explode)
    assert store.load(spec) is None and not store.all("demo")
    artifact = store.materialize(spec, lambda work: {"answer": 42})
    assert artifact.figures == {"answer": 42} and store.load(spec).key == spec.key


@pytest.mark.slow
def test_a_multirun_evaluates_one_setting_per_job(tmp_path):
    """Hydra's basic launcher; the documented submitit_local sweep is run and counted by tests.test_readme."""
    args = ["-m", "+experiment=micro", "stage=sweep", "decode=threshold", "decode.threshold=0.5,0.8",
            f"output_dir={tmp_path}", "logger=none", "progress=false"]
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    results = sweep_results(tmp_path)
    assert set(results) == {"threshold t=0.5 L=32", "threshold t=0.8 L=32"}
