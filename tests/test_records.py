"""What a run leaves on record, through the command line: training that diverges stops in one line and leaves
nothing a resume could not use; a forced identical retrain keeps its artifact's digest and everything downstream;
a resumed policy keeps its whole history and its cost; ``stage=status`` writes nothing and reports a damaged
artifact of any stage alike."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.configuration.hydra import PROJECT_ROOT
from pipeline.runtime.progress import read_history
from tests.shared_runs import shared_run
from tests.test_artifacts import complete, copy_of, one_line_error
from tests.test_cli import run_cli

MICRO = ["+experiment=micro", "logger=none", "progress=false"]
UPDATES = 4
POLICY = [*MICRO, f"train_policy.updates={UPDATES}", "train_policy.prompts_per_update=2", "train_policy.group_size=2",
          "train_policy.num_prompts=4", "train_policy.val_prompts=4", "train_policy.knob=[0.0,4.0]",
          "train_policy.val_every_n_updates=1", "train_policy.checkpoint_every_n_updates=1",
          "sweep.grid=[{policy: vanilla}, {policy: filter, threshold: [0.7]}, {policy: rl_filter, threshold: [null]}]",
          "sweep.num_prompts=8"]


@pytest.fixture(scope="module")
def finished(micro_pipeline, tmp_path_factory) -> Path:
    """Every stage of a micro experiment whose sweep decodes with its own reinforced policy (the trajectories and
    the filter from the session's micro run)."""
    return shared_run(tmp_path_factory, "policy", POLICY, seeded_from=micro_pipeline[0])[0]


def listing(out: Path) -> dict[str, int]:
    """Every path under ``out`` with its size (folders: -1), to see that nothing was added, removed or rewritten
    to another size."""
    return {str(p.relative_to(out)): p.stat().st_size if p.is_file() else -1 for p in sorted(out.rglob("*"))}


def manifest(out: Path, stage: str) -> dict:
    (path,) = complete(out, stage)
    return json.loads((path / "manifest.json").read_text())


# ---- training that diverges ---------------------------------------------------------------------------------

DIVERGING = [  # (the command's stage, settings, the stage that diverges, what the line ends with)
    ("train_policy", ["train_policy.lr=1e30"], "train_policy",
     "(training diverged); lower train_policy.lr=1e+30 or train_policy.speed_weights=[0.0, 4.0]"),
    ("all", ["train_policy.speed_weights=[0,1e39]"], "train_policy",
     "(training diverged); lower train_policy.lr=0.001 or train_policy.speed_weights=[0.0, 1e+39]"),
    ("train_filter", ["train_filter.lr=1e30"], "train_filter", "(training diverged); lower train_filter.lr=1e+30"),
]


@pytest.mark.parametrize(("command", "settings", "stage", "lower"), DIVERGING,
                         ids=[f"stage={d[0]} {' '.join(d[1])}" for d in DIVERGING])
def test_training_that_diverges_ends_in_one_line_and_leaves_nothing(finished, tmp_path, command, settings, stage,
                                                                    lower):
    """The settings the line names are part of the artifact's key: a rerun with one lowered trains in another work
    folder, so nothing of the diverged one is kept (no work folder, lock or run folder), nor anything after it."""
    out = copy_of(finished, tmp_path)
    before = listing(out)
    line = one_line_error(run_cli(*POLICY, f"stage={command}", *settings, f"output_dir={out}"))
    assert line.startswith(f"error: {stage}: the loss is nan at ") and line.endswith(lower), line
    assert listing(out) == before


PRETRAIN = ["stage=pretrain", "progress=false", "pretrain.max_steps=4", "pretrain.batch_size=4",
            "pretrain.architecture.hidden_size=16", "pretrain.architecture.num_hidden_layers=1",
            "pretrain.architecture.num_attention_heads=2", "pretrain.architecture.intermediate_size=32",
            "pretrain.val_every=100", "pretrain.val_prompts=4", "pretrain.checkpoint_every=1"]


def test_pretraining_that_diverges_keeps_only_the_checkpoint_a_lower_rate_can_resume(tmp_path):
    """Pretraining's work folder is the model's, and a rerun resumes from its last checkpoint at the rate it is
    given: the checkpoint saved before the divergence stays, the run's log goes. One whose own first step
    diverges is of no use at any rate and is deleted; the rerun after that starts over and finishes, with the
    weights of the same pretraining done elsewhere in one go."""
    out, model = tmp_path / "out", tmp_path / "model"
    args = [*PRETRAIN, f"output_dir={out}", f"pretrain.save_to={model}"]
    last = out / "pretrain" / "tiny-arith" / "checkpoints" / "last.ckpt"
    line = one_line_error(run_cli(*args, "pretrain.lr=1e30"))
    assert line.startswith("error: pretrain: ") and "at step 2 (training diverged); lower pretrain.lr=1e+30 and " \
        f"rerun: it resumes from the last checkpoint, saved before the divergence ({last}; delete it" in line, line
    assert torch.load(last, weights_only=False)["global_step"] == 1
    assert not (out / "pretrain" / "tiny-arith" / "logs").exists() and not model.exists()
    line = one_line_error(run_cli(*args, "pretrain.lr=1e-3"))
    assert line.endswith(f"lower pretrain.lr=0.001; the checkpoint it resumed from ({last}) diverges at its first "
                         "step, so it was deleted: a rerun starts over"), line
    assert not last.exists()
    again = run_cli(*args, "pretrain.lr=1e-3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" not in again.stderr
    # the weights are the model's identity in every downstream key: the same pretraining elsewhere, the same ones
    other = tmp_path / "other"
    result = run_cli(*PRETRAIN, "pretrain.lr=1e-3", f"output_dir={other}", f"pretrain.save_to={other / 'model'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (model / "model.safetensors").read_bytes() == (other / "model" / "model.safetensors").read_bytes()


def test_a_resumed_pretraining_trains_at_the_rate_it_is_given():
    """Lowering ``pretrain.lr`` after a divergence takes effect on the resume, where the schedule left off."""
    from pipeline.learning.pretrain import DiffusionPretraining

    module = DiffusionPretraining(dict(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16, max_position_embeddings=16), lr=1e-3)
    checkpoint = {"lr_schedulers": [{"base_lrs": [0.5, 0.5], "_last_lr": [0.25, 0.25], "last_epoch": 7}],
                  "optimizer_states": [{"param_groups": [{"lr": 0.25, "initial_lr": 0.5} for _ in range(2)]}]}
    module.on_load_checkpoint(checkpoint)
    assert checkpoint["lr_schedulers"][0] == {"base_lrs": [1e-3, 1e-3], "_last_lr": [5e-4, 5e-4], "last_epoch": 7}
    assert checkpoint["optimizer_states"][0]["param_groups"] == [{"lr": 5e-4, "initial_lr": 1e-3}] * 2


# ---- records that survive -----------------------------------------------------------------------------------

def test_a_forced_identical_retrain_keeps_its_digest_and_everything_downstream(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    for stage in ("trajectories", "train_filter", "train_policy"):
        before = manifest(out, stage)
        forced = run_cli(*POLICY, f"stage={stage}", "force=true", f"output_dir={out}")
        assert forced.returncode == 0 and f"{stage} {before['key']}: written to" in forced.stderr, \
            forced.stderr[-3000:]
        after = manifest(out, stage)
        assert (after["digest"], after["file_digests"]) == (before["digest"], before["file_digests"]), stage
    results = {path.name: json.loads((path / "manifest.json").read_text())["digest"] for path in complete(out, "sweep")}
    forced = run_cli(*POLICY, "stage=sweep", "force=true", f"output_dir={out}")
    assert forced.returncode == 0 and forced.stderr.count("written to") == len(results), forced.stderr[-3000:]
    assert {path.name: json.loads((path / "manifest.json").read_text())["digest"]
            for path in complete(out, "sweep")} == results, "the sweep's records hold no timings"
    policy = complete(out, "train_policy")[0]
    timing = json.loads((policy / "timing.json").read_text())
    assert set(timing) == {"seconds", "minutes_per_1000_rollouts"}, "what it cost, beside the record"
    assert not set(timing) & set(json.loads((policy / "metrics.json").read_text()))
    again = run_cli(*POLICY, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "computing in" not in again.stderr, "every sweep result and the frontier are still current"


def killed(args: list[str], when: str) -> None:
    """Run the command line and kill it (SIGKILL: no handler runs) once a log line contains ``when``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if when in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-30:])


@pytest.mark.parametrize("when", [f"train_policy: update 2/{UPDATES}", "held-out prompts at speed"],
                         ids=["mid-run", "after training"])
def test_a_resumed_policy_keeps_its_history_its_cost_and_the_uninterrupted_record(finished, tmp_path, when):
    """Killed during training, or after it while the knob is validated: the resumed artifact is the
    uninterrupted one's (same digest), its history holds every update once, and its cost counts the training
    seconds of every run that led to it."""
    out = copy_of(finished, tmp_path)
    clean = manifest(out, "train_policy")
    shutil.rmtree(complete(out, "train_policy")[0])
    args = [*POLICY, "stage=train_policy", f"output_dir={out}"]
    killed(args, when)
    (work,) = (out / "artifacts" / "train_policy").glob("*.partial")
    saved = torch.load(work / "checkpoints" / "last.ckpt", weights_only=False)
    carried = saved["callbacks"]["TrainingClock"]["seconds"]
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"train_policy: resuming from {work / 'checkpoints' / 'last.ckpt'} (after update" in resumed.stderr
    record = manifest(out, "train_policy")
    assert (record["digest"], record["file_digests"]) == (clean["digest"], clean["file_digests"])
    figures = record["figures"]
    assert {k: v for k, v in figures.items() if k.startswith("train/")} == \
        {k: v for k, v in clean["figures"].items() if k.startswith("train/")} != {}
    rollouts = UPDATES * 2 * 2
    assert figures["rollouts"] == rollouts and figures["seconds"] >= carried > 0
    assert figures["minutes_per_1000_rollouts"] == pytest.approx(figures["seconds"] / 60 / rollouts * 1000)
    if when.startswith("held-out"):  # nothing left to train: the seconds are those of the killed run
        assert saved["global_step"] == UPDATES and figures["seconds"] == carried
    else:
        assert 0 < saved["global_step"] < UPDATES, "killed with updates to go"
        assert saved["step_row"]["step"] == str(saved["global_step"] - 1) and "train/reward" in saved["step_row"]
    history = read_history(complete(out, "train_policy")[0] / "logs" / "version_0" / "metrics.csv")
    trained = [int(row["step"]) for row in history if row["train/reward"]]
    validated = [int(row["step"]) for row in history if row["val/reward"]]
    assert trained == list(range(UPDATES)), "every update, once, in order"
    assert validated == sorted(set(validated)) and validated[-1] == UPDATES - 1


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_a_resumed_history_keeps_what_came_before_its_checkpoint_and_no_line_cut_by_a_kill(tmp_path):
    from pipeline.runtime.training import history_logger

    history = tmp_path / "logs" / "version_0" / "metrics.csv"
    history.parent.mkdir(parents=True)
    history.write_text("epoch,step,train/loss,val/loss\r\n0,0,0.5,\r\n0,0,,0.25\r\n0,1,0.125,\r\n1,2,0.0625,\r\n1,3,0.0")
    history_logger(tmp_path, resumed_at=2)
    assert history.read_text().splitlines() == ["epoch,step,train/loss,val/loss", "0,0,0.5,", "0,0,,0.25",
                                                "0,1,0.125,"]
    history_logger(tmp_path, resumed_at=0)
    assert not history.exists(), "a run that starts over starts its history over"


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_the_row_of_the_step_a_checkpoint_follows_is_written_from_the_checkpoint(tmp_path):
    """Lightning writes a step's row after the checkpoint that follows the step; a kill in between leaves it out
    of the file, and the resume takes it from the checkpoint (StepRow), once."""
    from pipeline.runtime.training import history_logger

    history = tmp_path / "logs" / "version_0" / "metrics.csv"
    history.parent.mkdir(parents=True)
    history.write_text("epoch,step,train/loss,val/loss\r\n0,0,0.5,\r\n0,0,,0.25\r\n")
    kept = {"epoch": "0", "step": "1", "train/loss": "0.125"}
    history_logger(tmp_path, resumed_at=2, kept=kept)
    assert history.read_text().splitlines() == ["epoch,step,train/loss,val/loss", "0,0,0.5,", "0,0,,0.25",
                                                "0,1,0.125,"]
    history_logger(tmp_path, resumed_at=2, kept=kept)
    assert len(history.read_text().splitlines()) == 4, "a row the file has is not written twice"


# ---- read-only status ---------------------------------------------------------------------------------------

def test_status_writes_nothing(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = listing(out)
    result = run_cli(*POLICY, "stage=status", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("trajectories", "train_filter", "train_policy", "sweep", "sweep_filter", "aggregate"):
        assert f"  {stage:<13} complete" in result.stdout, result.stdout
    assert listing(out) == before, "no run folder, no log"
    fresh = tmp_path / "fresh"
    result = run_cli(*MICRO, "stage=status", f"output_dir={fresh}")
    assert result.returncode == 0 and "trajectories  missing" in result.stdout, result.stderr[-3000:]
    assert not fresh.exists()


DAMAGED = [("train_policy", "train_policy", "policy/filter.safetensors"), ("sweep", "sweep", "tokens.pt")]


@pytest.mark.parametrize(("stage", "row", "name"), DAMAGED, ids=[d[0] for d in DAMAGED])
def test_status_reports_a_damaged_artifact_of_any_stage_alike(finished, tmp_path, stage, row, name):
    """Deleted weights of the policy, a deleted result of the sweep (vanilla's, in the ``sweep`` row): shown as
    damaged, then one error line naming the file and what to do, exit status 2; nothing is recomputed or written."""
    out = copy_of(finished, tmp_path)
    artifact = next(path for path in complete(out, stage)
                    if json.loads((path / "manifest.json").read_text())["figures"].get("label", "vanilla L=32")
                    == "vanilla L=32")
    (artifact / name).unlink()
    before = listing(out)
    result = run_cli(*POLICY, "stage=status", f"output_dir={out}")
    line = one_line_error(result)
    assert line == (f"error: {artifact / name}: damaged artifact file (missing); rerun `stage={stage}` with the "
                    f"settings that made it to recompute it, or delete {artifact}")
    assert f"  {row:<13} damaged" in result.stdout and f"  {artifact / name}: damaged" in result.stdout
    assert "recomputing" not in result.stderr
    assert listing(out) == before
