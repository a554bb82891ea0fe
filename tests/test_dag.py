"""The experiment as a DAG of cluster jobs, planned from artifact keys alone; the job-state and log helpers."""

from __future__ import annotations

import pytest
from hydra.core.utils import JobReturn, JobStatus

from pipeline.configuration.command import expand_grid
from pipeline.execution import local, plan, slurm
from pipeline.execution.hydra_callbacks import FailedJobsFailOnSlurm
from pipeline.learning.trajectories import shard_name
from pipeline.stages import trajectories
from pipeline.stages.context import StageContext
from tests.conftest import compose_config


def planned(tmp_path, *overrides: str) -> tuple[StageContext, dict[str, plan.Node]]:
    ctx = StageContext(compose_config(["+experiment=micro", f"output_dir={tmp_path}", *overrides]))
    return ctx, {node.name: node for node in plan.plan(ctx)}


def test_a_fresh_experiment_plans_every_stage_with_its_dependencies(tmp_path):
    ctx, nodes = planned(tmp_path)
    assert list(nodes) == ["trajectories", "train_filter", "sweep", "sweep_filter", "aggregate"]
    assert {name: node.after for name, node in nodes.items()} == {
        "trajectories": [], "train_filter": ["trajectories"], "sweep": [], "sweep_filter": ["train_filter"],
        "aggregate": ["sweep", "sweep_filter"]}
    assert nodes["trajectories"].parts == [[0]]
    settings = [s.policy + ("+eotp" if s.eotp else "") for s in expand_grid(ctx.cfg)]
    # the oracle shares a task with the vanilla decode it replays; the filter settings wait for the filter
    assert [[settings[i] for i in part] for part in nodes["sweep"].parts] == [["vanilla", "egp"], ["threshold"]]
    assert [[settings[i] for i in part] for part in nodes["sweep_filter"].parts] == [["filter"], ["filter+eotp"]]
    assert not any(node.complete for node in nodes.values())
    assert not (tmp_path / "artifacts").exists(), "planning writes nothing"


def test_the_reinforced_policy_is_a_node_between_the_filter_and_the_learned_settings(tmp_path):
    grid = "sweep.grid=[{policy: vanilla}, {policy: filter}, {policy: rl_filter, threshold: [null, 0.5]}]"
    ctx, nodes = planned(tmp_path, "filter=transformer1", grid)
    assert list(nodes) == ["trajectories", "train_filter", "train_policy", "sweep", "sweep_filter", "aggregate"]
    assert nodes["train_policy"].after == ["train_filter"]
    assert nodes["sweep_filter"].after == ["train_filter", "train_policy"]
    settings = expand_grid(ctx.cfg)
    assert sorted(settings[i].policy for part in nodes["sweep_filter"].parts for i in part) == \
        ["filter", "rl_filter", "rl_filter"]
    _, nodes = planned(tmp_path, "filter=transformer1", "stage=sweep", "sweep.grid=[{policy: rl_filter}]")
    assert list(nodes) == ["trajectories", "train_filter", "train_policy", "sweep_filter"]


def test_written_shards_are_not_planned_again_and_sweep_tasks_bounds_the_array(tmp_path):
    ctx, _ = planned(tmp_path, "trajectories.num_shards=3")
    work = ctx.store.work_dir(trajectories.spec(ctx)) / "shards"
    (work / shard_name(1, 3)).mkdir(parents=True)
    _, nodes = planned(tmp_path, "trajectories.num_shards=3", "launcher.sweep_tasks=1")
    assert nodes["trajectories"].parts == [[0], [2]]
    assert (nodes["trajectories"].done, nodes["trajectories"].total) == (1, 3)
    assert len(nodes["sweep"].parts) == 1 and sorted(nodes["sweep"].parts[0]) == [0, 1, 2]
    for name in (0, 2):
        (work / shard_name(name, 3)).mkdir()
    _, nodes = planned(tmp_path, "trajectories.num_shards=3")
    assert nodes["trajectories"].parts == [[]], "all shards written: one job finalises the artifact"


def test_a_stage_plans_only_itself_and_what_it_needs(tmp_path):
    _, nodes = planned(tmp_path, "stage=sweep", "sweep.grid=[{policy: vanilla}, {policy: threshold}]")
    assert list(nodes) == ["sweep"], "a sweep without filter settings needs no filter"
    _, nodes = planned(tmp_path, "stage=train_filter")
    assert list(nodes) == ["trajectories", "train_filter"]


def test_a_stage_run_whole_plans_what_it_reads(tmp_path):
    _, nodes = planned(tmp_path, "stage=benchmark")  # the micro grid holds filter settings
    assert list(nodes) == ["trajectories", "train_filter", "benchmark"]
    assert nodes["benchmark"].after == ["train_filter"]
    _, nodes = planned(tmp_path, "stage=benchmark", "sweep.grid=[{policy: vanilla}]")
    assert list(nodes) == ["benchmark"]
    _, nodes = planned(tmp_path, "stage=evaluate")
    assert list(nodes) == ["evaluate"]


def ran(monkeypatch, tmp_path, *overrides: str) -> list[tuple[str, list[int] | None]]:
    """What the local executor runs for a command: (stage, items) per step, the stages themselves stubbed."""
    calls: list[tuple[str, list[int] | None]] = []
    monkeypatch.setattr(local, "run_node", lambda ctx, stage, items=None: calls.append((stage, items)))
    monkeypatch.setattr(local, "prepare", lambda cfg: None)
    local.run(compose_config(["+experiment=micro", f"output_dir={tmp_path}", *overrides]))
    return calls


def test_the_local_run_executes_the_plan_s_nodes_in_order_the_sweep_in_grid_order(monkeypatch, tmp_path):
    ctx, nodes = planned(tmp_path)
    grid = sorted(nodes["sweep"].items + nodes["sweep_filter"].items)
    assert grid == list(range(len(expand_grid(ctx.cfg))))
    assert ran(monkeypatch, tmp_path) == [("trajectories", None), ("train_filter", None), ("sweep", grid),
                                          ("aggregate", None)]


def test_under_reuse_only_the_local_run_reads_upstream_nodes_instead_of_running_them(monkeypatch, tmp_path):
    assert ran(monkeypatch, tmp_path, "stage=aggregate", "reuse_only=true") == [("aggregate", None)]
    assert ran(monkeypatch, tmp_path, "stage=train_filter", "reuse_only=true") == [("train_filter", None)]


@pytest.mark.parametrize("tasks,expected", [(None, [[1], [2, 3], [4]]), (2, [[1, 4], [2, 3]]), (5, [[1], [2, 3], [4]])])
def test_chunks_deal_whole_groups_round_robin(tasks, expected):
    assert plan.chunk([[1], [2, 3], [4]], tasks) == expected


def test_array_ranges_from_accounting_are_expanded():
    assert slurm.expand_array("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert slurm.expand_array("12_3") == ["12_3"] and slurm.expand_array("12") == ["12"]


def test_the_error_line_is_the_exception_not_the_srun_notice(tmp_path):
    log = tmp_path / "1_0_log.err"
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: bad shard\n"
                   "srun: error: vm: task 0: Exited with exit code 1\n")
    assert slurm.error_line(log) == "ValueError: bad shard"
    assert "never started" in slurm.error_line(tmp_path / "missing.err")


def test_a_failed_multirun_job_exits_non_zero_only_inside_a_slurm_job(monkeypatch):
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    FailedJobsFailOnSlurm().on_job_end(config=None, job_return=failed)  # local multirun: Hydra reports it
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    with pytest.raises(SystemExit) as exit_:
        FailedJobsFailOnSlurm().on_job_end(config=None, job_return=failed)
    assert exit_.value.code == 1
    FailedJobsFailOnSlurm().on_job_end(config=None, job_return=JobReturn(status=JobStatus.COMPLETED))
