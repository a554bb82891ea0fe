"""``launcher=slurm``: the experiment's DAG (:mod:`pipeline.execution.plan`) submitted to Slurm through submitit.

The command submits only what is missing, with ``afterok`` dependencies, records the jobs and returns
(``launcher.wait=true`` blocks with a progress display instead); ``stage=status`` reads the record back, with the
artifacts' states, writing nothing. Each job runs :class:`StageJob`: a stage that raises exits non-zero, so Slurm
records FAILED and dependents are cancelled (``--kill-on-invalid-dep``). On preemption or near its time limit a
job saves what it holds (filter training: its last finished epoch) and requeues itself; the rerun skips finished
shards and settings, so the final results are those of an uninterrupted run. The signal protocol is submitit's
(``__submitit_checkpoint__``-style ``checkpoint`` method, USR2 before the time limit, ``scontrol requeue``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import logging
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from models.errors import InputError, UserError
from models.files import read_json_object
from pipeline.artifacts.store import MANIFEST, ArtifactStore, DamagedArtifactError, to_recompute, write_json_atomic
from pipeline.execution.local import prepare, run_node
from pipeline.execution.plan import Node, plan
from pipeline.runtime import preemption
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING"}
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
RECORD_LAG_S = 60  # how long accounting may take to show a new job
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@dataclass
class StageJob:
    """What one cluster job runs: a stage of the experiment on one part (a trajectory shard, some of the grid's
    settings), with the submitting command's config. Submitit pickles it and calls it in the job."""

    cfg: DictConfig
    stage: str

    def __call__(self, part: list[int]) -> str:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
        from pipeline.configuration.hydra import register
        from pipeline.configuration.validation import validate

        register()
        cfg = job_config(self.cfg, self.stage, part)
        validate(cfg)
        prepare(cfg)
        log.info("%s job: %s", self.stage, f"part {part}" if part else "whole stage")
        ctx = StageContext(cfg)  # its upstream nodes' artifacts are complete: the job ran after theirs
        result = run_node(ctx, self.stage, part if self.stage == "sweep" and part else None)
        if self.stage == "sweep":
            return f"sweep: {len(result)} settings in {ctx.store.root / 'sweep'}"
        return f"{self.stage}: {getattr(result, 'path', result)}"

    def checkpoint(self, part: list[int]) -> Any:
        """Called by submitit on preemption or near the time limit: save, then requeue the same call."""
        from submitit.helpers import DelayedSubmission

        preemption.save_all()
        return DelayedSubmission(self, part)


def job_config(cfg: DictConfig, stage: str, part: list[int]) -> DictConfig:
    """The submitting command's config, run locally for ``stage`` (and for one shard of the trajectories)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.stage, cfg.launcher.kind = stage, "local"
        if stage == "trajectories" and part:
            cfg.trajectories.shard = part[0]
    return cfg


# ---- submission -------------------------------------------------------------------------------------------------

def executor(cfg: DictConfig) -> Any:
    import submitit

    la = cfg.launcher
    ex = submitit.SlurmExecutor(folder=str(Path(la.folder) / "jobs"), max_num_timeout=la.max_requeues)
    params: dict[str, Any] = dict(time=la.time_min, cpus_per_task=la.cpus_per_task, mem=f"{la.mem_gb}GB",
                                  array_parallelism=la.array_parallelism, setup=list(la.setup),
                                  signal_delay_s=la.signal_delay_s, ntasks_per_node=1, nodes=1)
    for key in ("partition", "account", "qos", "gpus_per_node"):
        if la[key] is not None:
            params[key] = la[key]
    ex.update_parameters(**params)
    return ex


def submit(cfg: DictConfig) -> dict[str, Any]:
    """Submit what the experiment misses, print each job and where its results land, and return the record."""
    ctx = StageContext(cfg)
    nodes = plan(ctx)
    folder = Path(cfg.launcher.folder)
    previous = read_record(folder)
    queued = still_queued(previous)
    made_by = {row["name"]: row for row in (previous or {}).get("nodes", []) if row["job_id"]}
    ex, job_ids, rows = executor(cfg), {}, []
    for node in nodes:
        row = {**asdict(node), "job_id": None, "state": "complete"}
        earlier = queued.get(node.name)
        if node.complete:  # keep the job that made it, for stage=status
            if node.name in made_by and made_by[node.name]["keys"] == node.keys:
                row.update(job_id=made_by[node.name]["job_id"], parts=made_by[node.name]["parts"])
        elif earlier is not None and earlier["keys"] == node.keys:
            row.update(job_id=earlier["job_id"], parts=earlier["parts"], state="queued earlier")
            job_ids[node.name] = earlier["job_id"]
        else:
            after = [job_ids[name] for name in node.after if name in job_ids]
            extra = dict(OmegaConf.to_container(cfg.launcher.additional, resolve=True))
            if after:
                extra.update(dependency="afterok:" + ":".join(after), kill_on_invalid_dep="yes")
            ex.update_parameters(job_name=f"{cfg.experiment_name}:{node.name}", additional_parameters=extra)
            jobs = submit_array(ex, StageJob(cfg, node.stage), node, list(job_ids.values()))
            job_ids[node.name] = jobs[0].job_id.split("_")[0]
            row.update(job_id=job_ids[node.name], state="submitted")
        rows.append(row)
    record = {"experiment": cfg.experiment_name, "stage": cfg.stage, "folder": str(folder),
              "submitted_at": datetime.datetime.now().isoformat(timespec="seconds"), "nodes": rows}
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    (folder / "submissions").mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "submissions" / f"{stamp}.json", record)
    write_json_atomic(folder / "latest.json", record)
    print_submission(record)
    if cfg.launcher.wait:
        wait(cfg, record)
    return record


class SubmissionError(UserError):
    """sbatch refused a job (no controller, an unknown partition, a GPU request the cluster cannot meet ...)."""


def submit_array(ex: Any, job: StageJob, node: Node, earlier: list[str]) -> list[Any]:
    """Submit one node's array; on a refusal, cancel what this command submitted before it (its dependents would
    wait forever) and say what sbatch said."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    folder = Path(ex.folder)
    before = set(folder.iterdir()) if folder.exists() else set()
    said_there = io.StringIO()  # submitit echoes sbatch's complaint to stderr: it is said once, below
    try:
        with contextlib.redirect_stderr(said_there):
            return ex.map_array(job, node.parts)
    except (FailedJobError, FailedSubmissionError, OSError) as error:
        for leftover in set(folder.iterdir()) - before if folder.exists() else ():  # the refused job's files
            leftover.unlink(missing_ok=True)
        if earlier:
            subprocess.run(["scancel", *earlier], capture_output=True, timeout=60, check=False)
        said = sbatch_message(str(error))
        cancelled = f"; cancelled the jobs submitted before it ({', '.join(earlier)})" if earlier else ""
        raise SubmissionError(f"launcher=slurm: sbatch refused the {node.name} job: {said}{cancelled}; check "
                              "launcher.partition, launcher.gpus_per_node, launcher.account and launcher.additional, "
                              "and that Slurm answers (`sinfo`)") from error


def sbatch_message(output: str) -> str:
    """The line of sbatch's output that says why (``sbatch: error: ...``), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    chosen = errors[-1] if errors else (lines[-1] if lines else "no output")
    return chosen.removeprefix("sbatch: error: ")


def print_submission(record: dict[str, Any]) -> None:
    jobs = Path(record["folder"]) / "jobs"
    print(f"experiment {record['experiment']}: job logs in {jobs}")
    for row in record["nodes"]:
        if row["state"] == "complete":
            print(f"  {row['name']:<13} complete, nothing to submit  results: {row['results']}")
            continue
        after = f" afterok {','.join(row['after'])}" if row["after"] else ""
        logs = tasks_of(row, jobs)
        log_name = logs[0][1] if len(logs) == 1 else jobs / f"{row['job_id']}_<task>_0_log.err"
        print(f"  {row['name']:<13} job {row['job_id']} ({len(logs)} task(s), {row['state']}{after})  "
              f"log: {log_name}  results: {row['results']}")
    if all(row["state"] == "complete" for row in record["nodes"]):
        print("everything is complete; nothing was submitted")


RECORD_FIELDS = {"experiment": str, "stage": str, "folder": str, "submitted_at": str, "nodes": list}


def read_record(folder: Path) -> dict[str, Any] | None:
    """The last submission's record, or None when there is none; a damaged one is named (each submission is also
    kept under ``submissions/``)."""
    latest = folder / "latest.json"
    if not latest.exists():
        return None
    fix = f"delete it (the next launcher=slurm submission writes it anew; earlier ones are in {folder / 'submissions'})"
    record = read_json_object(latest, fix)
    wrong = [name for name, kind in RECORD_FIELDS.items() if not isinstance(record.get(name), kind)]
    if wrong:
        raise InputError(latest, f"not a submission record (no valid {', '.join(wrong)})", fix)
    return record


def still_queued(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Nodes of the last submission whose jobs are still pending or running (not to be submitted twice)."""
    if record is None:
        return {}
    rows = [row for row in record["nodes"] if row["job_id"]]
    states, folder = job_states([row["job_id"] for row in rows]), Path(record["folder"]) / "jobs"
    return {row["name"]: row for row in rows
            if any(state in ACTIVE for state in task_states(row, states, folder, record["submitted_at"]).values())}


# ---- job states -------------------------------------------------------------------------------------------------

def job_states(job_ids: list[str]) -> dict[str, str]:
    """``<job>_<task>`` (``<job>`` for a single job) -> Slurm state: the controller's (squeue) for live jobs, else
    accounting's (sacct). Without accounting an ended job reads UNKNOWN; with it, a job not recorded yet (just
    submitted) reads PENDING."""
    if not job_ids:
        return {}
    ids = ",".join(job_ids)
    accounting = query(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ids])
    live = query(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ids])
    states = {**(accounting or {}), **(live or {})}
    return states | {"_accounting": "yes" if accounting is not None else "no"}


def query(command: list[str]) -> dict[str, str] | None:
    """``JobID|State`` lines of sacct or squeue as a dict; None when the command fails (no accounting)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states: dict[str, str] = {}
    for line in out.splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            for task in expand_array(job.strip()):
                states[task] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def expand_array(job: str) -> list[str]:
    """``123_[0-2,5%2]`` -> ``123_0 123_1 123_2 123_5`` (sacct's form for array tasks not started yet)."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job)
    if not match:
        return [job]
    base, spec = match.group(1), match.group(2).split("%")[0]
    tasks = []
    for piece in spec.split(","):
        first, _, last = piece.partition("-")
        tasks += [f"{base}_{i}" for i in range(int(first), int(last or first) + 1)]
    return tasks


def tasks_of(row: dict[str, Any], folder: Path) -> list[tuple[str, Path]]:
    """Each task's Slurm id and stderr log (submitit submits a one-part node as a plain job, not an array)."""
    if len(row["parts"]) == 1:
        return [(row["job_id"], folder / f"{row['job_id']}_0_log.err")]
    return [(f"{row['job_id']}_{i}", folder / f"{row['job_id']}_{i}_0_log.err") for i in range(len(row["parts"]))]


def task_states(row: dict[str, Any], states: dict[str, str], folder: Path, submitted_at: str) -> dict[str, str]:
    """Each task's state; one accounting has not recorded yet reads PENDING for a minute after submission."""
    age = datetime.datetime.now() - datetime.datetime.fromisoformat(submitted_at)
    recent = states.get("_accounting") == "yes" and age < datetime.timedelta(seconds=RECORD_LAG_S)
    return {task: states.get(task, "PENDING" if recent else "UNKNOWN") for task, _ in tasks_of(row, folder)}


def error_line(log_file: Path) -> str:
    """The last line a failed job wrote to stderr that is not srun's own exit notice: the exception, or Slurm's
    reason (``CANCELLED ... DUE TO TIME LIMIT``)."""
    if not log_file.exists():
        return "(no log written: the job never started)"
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("srun:")]
    return lines[-1] if lines else "(empty log)"


def summarize(record: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Per node: job id, each task's state, failures with their log and error line; and whether any is active."""
    rows = [row for row in record["nodes"] if row["job_id"]]
    states = job_states([row["job_id"] for row in rows])
    jobs, summary, active = Path(record["folder"]) / "jobs", [], False
    for row in record["nodes"]:
        tasks = task_states(row, states, jobs, record["submitted_at"]) if row["job_id"] else {}
        active |= any(state in ACTIVE for state in tasks.values())
        logs = dict(tasks_of(row, jobs)) if row["job_id"] else {}
        failures = [{"task": task, "state": state, "log": str(logs[task]), "error": error_line(logs[task])}
                    for task, state in tasks.items() if state in FAILED]
        summary.append({"name": row["name"], "job_id": row["job_id"], "tasks": tasks, "failures": failures})
    return summary, active


def counts(tasks: dict[int, str]) -> str:
    seen: dict[str, int] = {}
    for state in tasks.values():
        seen[state] = seen.get(state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(seen.items()))


def wait(cfg: DictConfig, record: dict[str, Any]) -> None:
    """Block until no job of the record is pending or running, showing progress; exit 1 if a job failed."""
    from tqdm.auto import tqdm

    total = sum(len(row["parts"]) for row in record["nodes"] if row["job_id"])
    bar = tqdm(total=total, desc=f"{record['experiment']} on Slurm", unit="job", disable=None if cfg.progress else True,
               file=sys.stderr)
    while True:
        summary, active = summarize(record)
        ended = sum(1 for node in summary for state in node["tasks"].values() if state not in ACTIVE)
        bar.n = ended
        bar.set_postfix_str(" | ".join(f"{n['name']}: {counts(n['tasks'])}" for n in summary if n["tasks"]))
        if not active:
            break
        time.sleep(cfg.launcher.poll_s)
    bar.close()
    report(summary)
    if any(node["failures"] for node in summary):
        sys.exit(1)
    frontier = [Path(row["results"]) / "frontier.md" for row in record["nodes"] if row["name"] == "aggregate"]
    if frontier and frontier[0].exists():
        print(frontier[0].read_text())
        print(f"frontier table: {frontier[0]}")


def report(summary: list[dict[str, Any]]) -> None:
    for node in summary:
        state = counts(node["tasks"]) if node["tasks"] else "complete"
        print(f"  {node['name']:<13} {'job ' + node['job_id'] if node['job_id'] else '':<14} {state}")
        for failure in node["failures"]:
            print(f"    {failure['task']} {failure['state']}: {failure['error']}\n      log: {failure['log']}")


def status(cfg: DictConfig) -> dict[str, Any]:
    """``stage=status``: each stage's artifact state, and its jobs' Slurm states from the last submission. It reads
    and writes nothing: a damaged artifact, of whatever stage, is shown as such and then named in one error line
    (exit status 2), never recomputed."""
    ctx = StageContext(cfg)
    ctx.store = ArtifactStore(cfg.output_dir, verify=cfg.verify_artifacts, read_only=True)
    with open_dict(cfg):
        cfg.stage = "all"
    nodes = plan(ctx)
    record = read_record(Path(cfg.launcher.folder))
    damaged = ctx.store.damaged
    print(f"experiment {cfg.experiment_name}: artifacts under {ctx.store.root}")
    for node in nodes:
        states = [artifact_state(ctx.store, node.stage, key) for key in node.keys]
        state = "damaged" if "damaged" in states else "complete" if set(states) == {"complete"} else "missing"
        done, total = (states.count("complete"), len(states)) if len(states) > 1 else (node.done, node.total)
        pieces = f" ({done}/{total})" if total > 1 else ""
        if node.stage == "sweep" and node.total > len(node.keys):  # sharded settings: their shards too
            pieces = f" ({done}/{len(node.keys)} settings, {node.done}/{node.total} shards)"
        print(f"  {node.name:<13} {state:<8}{pieces}  {node.results}")
    if damaged:
        print("damaged artifacts (rerun their stage to recompute them, or delete them):")
        for damage in damaged.values():
            print(f"  {damage.path}: {damage.problem}")
    summary: list[dict[str, Any]] = []
    if record is None:
        print(f"no submission recorded in {cfg.launcher.folder}")
    else:
        print(f"jobs of the submission at {record['submitted_at']} (logs in {Path(record['folder']) / 'jobs'}):")
        summary, _ = summarize(record)
        report(summary)
    if damaged:
        first, *others = damaged.values()
        more = f" ({len(others)} more damaged artifact(s) listed above)" if others else ""
        raise DamagedArtifactError(first.path, first.problem, first.fix + more)
    return {"nodes": [asdict(n) for n in nodes], "jobs": summary}


def artifact_state(store: ArtifactStore, stage: str, key: str) -> str:
    """``complete``, ``missing`` or ``damaged`` (then noted in the read-only store's ``damaged``): the artifact's
    own state, whatever the plan would recompute because of its upstream."""
    path = store.root / stage / key
    if path not in store.damaged and (path / MANIFEST).exists():
        try:
            store.read(path)
            return "complete"
        except DamagedArtifactError as damage:
            store.damaged[path] = to_recompute(damage, stage, path)
    return "damaged" if path in store.damaged else "missing"
