"""The pipeline on a real one-node Slurm cluster with accounting (slurm/*.sh): Hydra multirun sweeps through the
submitit launcher, and the whole DAG through ``launcher=slurm_local`` (submission, status, failures, requeues,
time limits).

The fixture installs Slurm when it is missing (slurm/install.sh, needs root and apt), starts a cluster of its own in
a tmp dir and stops exactly the daemons it started; nothing here is skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.configuration.hydra import PROJECT_ROOT
from tests.in_process import run_in_process

SLURM_SCRIPTS = PROJECT_ROOT / "slurm"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory) -> Path:
    """The scratch dir of a running cluster; SLURM_CONF=<scratch>/slurm.conf talks to it."""
    installed = subprocess.run(["bash", str(SLURM_SCRIPTS / "install.sh")], capture_output=True, text=True,
                               timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    scratch = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_local_cluster.sh"), str(scratch)],
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert started.stdout.strip() == str(scratch)
        yield scratch
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_local_cluster.sh"), str(scratch)], timeout=120)


def slurm_env(scratch: Path) -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(scratch / "slurm.conf"), OMP_NUM_THREADS="1", WANDB_MODE="offline")


def daemons_alive(scratch: Path) -> list[int]:
    pids = [int(line) for line in (scratch / "pids").read_text().split()]
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_the_cluster_is_up_and_a_second_start_leaves_it_alone(slurm_cluster):
    pids = (slurm_cluster / "pids").read_text().split()
    assert len(pids) == 5 and len(daemons_alive(slurm_cluster)) == 5  # munged, mariadbd, slurmdbd, ctld, slurmd
    again = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_local_cluster.sh"), str(slurm_cluster)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert (slurm_cluster / "pids").read_text().split() == pids
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %T"], env=slurm_env(slurm_cluster), capture_output=True,
                           text=True, timeout=30)
    assert nodes.stdout.split() == ["local*", "idle"]
    accounting = subprocess.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"],
                                env=slurm_env(slurm_cluster), capture_output=True, text=True, timeout=30)
    assert accounting.stdout.split() == ["learn2pd-local"], accounting.stderr


def test_missing_slurm_binaries_are_reported_with_the_fix(tmp_path):
    result = subprocess.run(["/bin/bash", str(SLURM_SCRIPTS / "start_local_cluster.sh"), str(tmp_path / "x")],
                            env={"PATH": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "run slurm/install.sh" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_multirun_sweep_runs_as_a_slurm_job_array(slurm_cluster, tmp_path):
    submitit = tmp_path / "submitit"
    args = ["-m", "+experiment=micro", "stage=sweep", "decode=threshold", "decode.threshold=0.6,0.85",
            f"output_dir={tmp_path}", "logger=none", "progress=false", "hydra/launcher=slurm_local",
            f"hydra.launcher.submitit_folder={submitit}"]
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=slurm_env(slurm_cluster),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    results = sorted((tmp_path / "artifacts" / "sweep").glob("*/result.json"))
    settings = [json.loads(path.read_text())["setting"] for path in results]
    assert len(settings) == 2
    assert {s["policy"] for s in settings} == {"threshold"}
    assert {s["threshold"] for s in settings} == {0.6, 0.85}

    # Slurm ran them: one array job of this cluster (ids start at its FirstJobId), tasks 0 and 1, each with a
    # submitit log that names its Slurm job id, and slurmctld still knows them as COMPLETED (no sacct needed).
    logs = sorted(submitit.glob("*_log.out"))
    assert len(logs) == 2, sorted(p.name for p in submitit.iterdir())
    job_ids = {re.search(r"JobEnvironment\(job_id=(\d+_\d+)", p.read_text()).group(1) for p in logs}
    array_ids = {job_id.split("_")[0] for job_id in job_ids}
    assert len(array_ids) == 1
    array_id = array_ids.pop()
    assert job_ids == {f"{array_id}_0", f"{array_id}_1"}
    first_job_id = int(re.search(r"^FirstJobId=(\d+)$", (slurm_cluster / "slurm.conf").read_text(), re.M).group(1))
    assert int(array_id) >= first_job_id

    script = (submitit / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --partition=local" in script
    assert f"source {PROJECT_ROOT}/slurm/env.sh" in script
    assert job_states(slurm_cluster, array_id) == {"0": "COMPLETED", "1": "COMPLETED"}


def job_states(scratch: Path, array_id: str, wait_s: float = 30) -> dict[str, str]:
    """Array task id -> state, as slurmctld reports it; waits while a task is still ending (submitit returns as
    soon as a result is written, a moment before Slurm marks the task COMPLETED)."""
    deadline = time.monotonic() + wait_s
    while True:
        shown = subprocess.run(["scontrol", "-o", "show", "job", array_id], env=slurm_env(scratch),
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        states = dict(re.findall(r"ArrayTaskId=(\d+) .*?JobState=(\w+)", shown.stdout))
        if time.monotonic() > deadline or not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values()):
            return states
        time.sleep(0.5)


def test_a_multirun_job_that_raises_is_failed_on_slurm(slurm_cluster, tmp_path, project_root):
    """Hydra's run_job swallows the exception; the callback makes the job exit non-zero, so Slurm says FAILED. The
    fault is one only the job can see (the submitting side checks the device's name, the job whether it exists)."""
    assert not torch.cuda.is_available(), "the test cluster's node has no GPU: device=cuda fails in the job"
    submitit = tmp_path / "submitit"
    args = ["-m", "+experiment=micro", "stage=sweep", "device=cuda", "decode=threshold",
            "decode.threshold=0.6,0.85", f"output_dir={tmp_path}", "logger=none", "progress=false",
            "hydra/launcher=slurm_local", f"hydra.launcher.submitit_folder={submitit}"]
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT,
                            env=slurm_env(slurm_cluster), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said = result.stderr + "".join(log.read_text() for log in submitit.glob("*_log.err"))
    assert "device=cuda: no CUDA device is available here" in said, said[-3000:]
    array_id = re.search(r"JobEnvironment\(job_id=(\d+)_", next(submitit.glob("*_log.out")).read_text()).group(1)
    assert accounted_states(slurm_cluster, array_id) == {f"{array_id}_0": "FAILED", f"{array_id}_1": "FAILED"}


def accounted_states(scratch: Path, job_id: str, wait_s: float = 60) -> dict[str, str]:
    """Job (or array task) -> state as accounting records it (sacct), once no task is pending or running."""
    deadline = time.monotonic() + wait_s
    while True:
        shown = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                               env=slurm_env(scratch), capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        states = dict(line.split("|") for line in shown.stdout.split())
        states = {job: state.split()[0] for job, state in states.items()}
        if states and (time.monotonic() > deadline or not {"PENDING", "RUNNING", "REQUEUED"} & set(states.values())):
            return states
        time.sleep(1)


# ---- launcher=slurm: the whole DAG ------------------------------------------------------------------------------

WALL_CLOCK = {"speedup_wall", "tokens_per_s", "wall_time_s", "frontier_wall"}


def pipeline(scratch: Path, *args: str) -> subprocess.CompletedProcess:
    """The command line against the test cluster, run in this process (``tests.in_process``); its jobs start their
    own interpreters on the cluster's node, as on any cluster."""
    return run_in_process("pipeline", (*args, "logger=none", "progress=false"), PROJECT_ROOT, slurm_env(scratch))


def frontier(output_dir: Path) -> list[dict[str, str]]:
    """The frontier table without its wall-clock columns (timings differ between any two runs)."""
    (path,) = (output_dir / "artifacts" / "aggregate").glob("*/frontier.csv")
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(handle)]


def record(output_dir: Path, experiment: str = "micro") -> dict:
    return json.loads((output_dir / "slurm" / experiment / "latest.json").read_text())


def job_of(output_dir: Path, node: str) -> str:
    return next(row["job_id"] for row in record(output_dir)["nodes"] if row["name"] == node)


# The micro experiment with a sweep long enough to interrupt and filter training long enough to preempt; the
# cluster runs below are compared with this local run of the same settings.
MICRO = ["+experiment=micro", "sweep.num_prompts=96", "train_filter.max_epochs=1000",
         "train_filter.early_stopping_patience=null"]


@pytest.fixture(scope="module")
def local_micro(tmp_path_factory, slurm_cluster, micro_pipeline) -> Path:
    """The local run, from the session's micro trajectories (the cluster runs compute their own)."""
    from tests.shared_runs import seed

    out = seed(tmp_path_factory.mktemp("local"), micro_pipeline[0], ("trajectories",))
    result = pipeline(slurm_cluster, *MICRO, f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_dag_on_slurm_gives_the_local_frontier_and_is_never_resubmitted(slurm_cluster, local_micro, tmp_path):
    """Each sweep setting in two prompt shards, dealt to two array tasks per sweep node so that the two shards of a
    setting run in different tasks and the later one merges them: the frontier is the local unsharded run's."""
    started = time.monotonic()
    sharded = ["sweep.num_shards=2", "launcher.sweep_tasks=2"]
    result = pipeline(slurm_cluster, *MICRO, *sharded, "launcher=slurm_local", "launcher.wait=true",
                      "launcher.poll_s=1", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"micro DAG on Slurm: {time.monotonic() - started:.1f} s")
    nodes = {row["name"]: row for row in record(tmp_path)["nodes"]}
    assert list(nodes) == ["trajectories", "train_filter", "sweep", "sweep_filter", "aggregate"]
    assert nodes["train_filter"]["after"] == ["trajectories"] and nodes["sweep"]["after"] == []
    assert nodes["sweep_filter"]["after"] == ["train_filter"]
    assert nodes["aggregate"]["after"] == ["sweep", "sweep_filter"]
    for name in ("sweep", "sweep_filter"):
        shards = [sorted(piece % 2 for piece in part) for part in nodes[name]["parts"]]
        assert len(shards) == 2 and shards[0] != shards[1], "a setting's two shards in two tasks"
        settings = [sorted({piece // 2 for piece in part}) for part in nodes[name]["parts"]]
        assert settings[0] == settings[1]
    for row in nodes.values():  # printed: job id, log path and where the results land
        assert f"job {row['job_id']}" in result.stdout and row["results"] in result.stdout
        assert set(accounted_states(slurm_cluster, row["job_id"]).values()) == {"COMPLETED"}
    assert frontier(tmp_path) == frontier(local_micro)
    assert "frontier table:" in result.stdout

    again = pipeline(slurm_cluster, *MICRO, *sharded, "launcher=slurm_local", f"output_dir={tmp_path}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "everything is complete; nothing was submitted" in again.stdout
    status = pipeline(slurm_cluster, *MICRO, *sharded, "stage=status", "launcher=slurm_local",
                      f"output_dir={tmp_path}")
    assert status.returncode == 0, status.stderr[-3000:]
    assert re.search(r"sweep\s+complete \(3/3 settings, 6/6 shards\)", status.stdout), status.stdout
    for name, row in nodes.items():  # the jobs that made each artifact, still known
        assert re.search(rf"{name}\s+complete", status.stdout)
        assert re.search(rf"{name}\s+job {row['job_id']}\s+\d+ COMPLETED", status.stdout), status.stdout


@pytest.mark.slow
def test_a_failed_job_is_reported_and_its_dependents_never_start(slurm_cluster, tmp_path):
    """A corrupt trajectory shard on the shared disk: the trajectories job raises, Slurm records FAILED, everything
    after it is cancelled without starting, and status names the job, its log and the error."""
    from pipeline.stages import trajectories
    from pipeline.stages.context import StageContext
    from tests.conftest import compose_config

    ctx = StageContext(compose_config(["+experiment=micro", f"output_dir={tmp_path}"]))
    shard = ctx.store.work_dir(trajectories.spec(ctx)) / "shards" / "shard-00000-of-00001"
    shard.mkdir(parents=True)
    (shard / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    (shard / "dataset_info.json").write_text("{}")
    (shard / "state.json").write_text("{not json")

    result = pipeline(slurm_cluster, "+experiment=micro", "launcher=slurm_local", "launcher.wait=true",
                      "launcher.poll_s=1", f"output_dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-3000:]
    job = job_of(tmp_path, "trajectories")
    assert accounted_states(slurm_cluster, job) == {job: "FAILED"}
    for node in ("train_filter", "sweep_filter", "aggregate"):
        assert set(accounted_states(slurm_cluster, job_of(tmp_path, node)).values()) == {"CANCELLED"}
        assert not list((tmp_path / "slurm" / "micro" / "jobs").glob(f"{job_of(tmp_path, node)}_*log.err"))
    assert set(accounted_states(slurm_cluster, job_of(tmp_path, "sweep")).values()) == {"COMPLETED"}

    status = pipeline(slurm_cluster, "+experiment=micro", "stage=status", "launcher=slurm_local",
                      f"output_dir={tmp_path}")
    log_file = tmp_path / "slurm" / "micro" / "jobs" / f"{job}_0_log.err"
    assert f"{job} FAILED: " in status.stdout and f"log: {log_file}" in status.stdout
    error = re.search(rf"{job} FAILED: (.*)", status.stdout).group(1)
    assert "Error" in error and not error.startswith("srun:")
    assert re.search(r"trajectories\s+missing", status.stdout)


def wait_for(predicate, timeout_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_until_ended(scratch: Path, job: str, timeout_s: float = 300) -> dict[str, str]:
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", job], env=slurm_env(scratch), capture_output=True,
                                        text=True).stdout.strip(), timeout_s, f"job {job} to end")
    return accounted_states(scratch, job)


def attempts(scratch: Path, job: str) -> list[str]:
    """Every run of a job, requeued ones included (sacct --duplicates)."""
    shown = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "State", "-j", job], env=slurm_env(scratch),
                           capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in shown.stdout.split("\n") if line.strip()]


def sweep_metrics(out: Path) -> dict[str, dict]:
    """Result key -> metrics of every sweep result, without timings."""
    found = {}
    for path in (out / "artifacts" / "sweep").glob("*/result.json"):
        metrics = json.loads(path.read_text())["metrics"]
        found[path.parent.name] = {k: v for k, v in metrics.items()
                                   if k not in ("wall_time_s", "tokens_per_s", "forward_seconds")}
    return found


@pytest.mark.slow
def test_a_requeued_sweep_skips_finished_settings_and_ends_as_a_local_run(slurm_cluster, local_micro, tmp_path):
    """``scontrol requeue`` once the sweep's one task has written the first prompt shard of its first setting: the
    rerun computes nothing the first run wrote, and the merged results equal the local (unsharded) run's.

    Slurm kills a requeued job only after its grace period (``KillWait``; submitit lets the SIGTERM before it
    pass), so the first run goes on for a few seconds, and a fast machine finishes whole settings in them: each
    shard the first run wrote is skipped by the rerun, or its setting, merged before the kill, is reused."""
    rules = "sweep.grid=[{policy:vanilla},{policy:egp},{policy:threshold,threshold:[0.9]}]"
    result = pipeline(slurm_cluster, *MICRO, "stage=sweep", rules, "sweep.num_shards=3", "launcher.sweep_tasks=1",
                      "launcher=slurm_local", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    job = job_of(tmp_path, "sweep")
    wait_for(lambda: list((tmp_path / "artifacts" / "sweep").glob("*.shards/*/shard.json")), 180, "a first shard")
    subprocess.run(["scontrol", "requeue", job], env=slurm_env(slurm_cluster), check=True, timeout=30)
    assert wait_until_ended(slurm_cluster, job) == {job: "COMPLETED"}
    assert attempts(slurm_cluster, job)[0] == "REQUEUED"

    log_text = (tmp_path / "slurm" / "micro" / "jobs" / f"{job}_0_log.err").read_text()
    runs = log_text.split("pipeline.execution.slurm][INFO] - sweep job:")
    assert len(runs) == 3, "one log section per run"
    first, rerun = runs[1], runs[2]
    written = re.findall(r"sweep \w+: (.+? L=\d+) (shard-\d+-of-\d+) written", first)
    assert ("vanilla L=32", "shard-00000-of-00003") in written
    for setting, shard in written:
        assert f"{setting} {shard} already written, skipping" in rerun or f"complete, reusing {setting}" in rerun, \
            f"{setting} {shard} computed again:\n{rerun[-2000:]}"
        assert f"{setting} {shard} written" not in rerun
    cluster = sweep_metrics(tmp_path)
    assert len(cluster) == 3
    assert cluster == {key: metrics for key, metrics in sweep_metrics(local_micro).items() if key in cluster}


def filter_files(out: Path) -> dict[str, bytes]:
    (folder,) = (out / "artifacts" / "train_filter").glob("*/filter")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_preempted_filter_training_saves_resumes_and_learns_the_same_filter(slurm_cluster, local_micro, tmp_path):
    """Preemption as submitit sees it (USR2): the job saves its last finished epoch, requeues itself, and the
    rerun resumes there; the filter is byte-identical to the uninterrupted local run's."""
    result = pipeline(slurm_cluster, *MICRO, "stage=train_filter", "launcher=slurm_local", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    job = job_of(tmp_path, "train_filter")
    partial = tmp_path / "artifacts" / "train_filter"
    wait_for(lambda: list(partial.glob("*.partial/checkpoints/last.ckpt")), 180, "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env(slurm_cluster), check=True, timeout=30)
    assert wait_until_ended(slurm_cluster, job) == {job: "COMPLETED"}
    assert attempts(slurm_cluster, job)[0] == "REQUEUED"
    log_text = (tmp_path / "slurm" / "micro" / "jobs" / f"{job}_0_log.err").read_text()
    saved = int(re.search(r"preempted: saved the state after epoch (\d+)", log_text).group(1))
    assert 0 < saved < 1000
    assert re.search(rf"resuming from \S+last.ckpt \(after epoch {saved}\)", log_text)
    assert filter_files(tmp_path) == filter_files(local_micro)


@pytest.mark.slow
def test_a_job_reaching_its_time_limit_is_requeued_and_finishes(slurm_cluster, tmp_path):
    """A 2-minute limit with the signal a minute before it: Slurm sends it up to a minute early (its periodic
    check), so it comes 0-60 s into the run. The job saves, requeues itself with a fresh limit, and the training
    finishes. 7,000 epochs take about 85 s beside the rest of the suite on a 2-core machine (12 ms an epoch), so
    the first run is signalled before its end; a machine fast enough to finish them before the signal (35 s at
    5 ms an epoch) gets the same run again with 2.5 times the epochs."""
    for epochs in (7000, 17500):
        out = tmp_path / f"epochs{epochs}"
        run = ["+experiment=micro", "stage=train_filter", "train_filter.early_stopping_patience=null",
               f"train_filter.max_epochs={epochs}", "train_filter.val_every_n_epochs=1000",
               "train_filter.checkpoint_every_n_epochs=1000", "launcher=slurm_local", "launcher.time_min=2",
               "launcher.signal_delay_s=60", "launcher.max_requeues=20", f"output_dir={out}"]
        result = pipeline(slurm_cluster, *run)
        assert result.returncode == 0, result.stderr[-3000:]
        job = job_of(out, "train_filter")
        again = pipeline(slurm_cluster, *run)
        assert again.returncode == 0, again.stderr[-3000:]
        assert re.search(rf"job {job} \(1 task\(s\), queued earlier", again.stdout), "not submitted twice"
        assert job_of(out, "train_filter") == job
        assert wait_until_ended(slurm_cluster, job, 1500) == {job: "COMPLETED"}
        if "REQUEUED" in attempts(slurm_cluster, job):
            break
    else:
        pytest.fail(f"the training ended before the time limit's signal, even at {epochs} epochs")
    log_text = (out / "slurm" / "micro" / "jobs" / f"{job}_0_log.err").read_text()
    assert "this job is timed-out" in log_text
    assert re.search(r"resuming from \S+last.ckpt \(after epoch [1-9]\d*\)", log_text)
    metrics = json.loads(next((out / "artifacts" / "train_filter").glob("*/metrics.json")).read_text())
    assert metrics["epochs"] == epochs
