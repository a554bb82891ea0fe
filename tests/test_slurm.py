"""A sweep submitted through Hydra's submitit launcher to a real one-node Slurm cluster (slurm/*.sh).

The fixture installs Slurm when it is missing (slurm/install.sh, needs root and apt), starts a cluster of its own in
a tmp dir and stops exactly the daemons it started; nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT

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
    assert len(pids) == 3 and len(daemons_alive(slurm_cluster)) == 3
    again = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_local_cluster.sh"), str(slurm_cluster)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert (slurm_cluster / "pids").read_text().split() == pids
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %T"], env=slurm_env(slurm_cluster), capture_output=True,
                           text=True, timeout=30)
    assert nodes.stdout.split() == ["local*", "idle"]


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
