"""Artifact identity and integrity: keys follow code and settings, stale results are recomputed, damaged inputs
are named, concurrent runs share one output folder, and a killed filter training resumes to the same filter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.artifacts.store as artifacts
from pipeline.artifacts.store import content_record, syntax_digest
from pipeline.configuration.command import expand_grid
from pipeline.configuration.hydra import PROJECT_ROOT
from pipeline.runtime.leftovers import remove_unheld_lock
from pipeline.stages import sweep, train_filter, trajectories
from pipeline.stages.context import StageContext
from tests.test_cli import run_cli

MICRO = ["+experiment=micro", "logger=none", "progress=false"]


def keys(compose_cfg, overrides: list[str] | None = None) -> dict[str, str]:
    ctx = StageContext(compose_cfg(["+experiment=micro", *(overrides or [])]))
    found = {"trajectories": trajectories.spec(ctx).key, "train_filter": train_filter.spec(ctx).key}
    for setting in expand_grid(ctx.cfg):
        found[sweep.describe(setting)] = sweep.spec_for(ctx, setting).key
    return found


def test_identical_settings_and_code_give_identical_keys(compose_cfg):
    first, again = keys(compose_cfg), keys(compose_cfg)
    assert first == again and len(set(first.values())) == len(first)
    other = keys(compose_cfg, ["trajectories.num_prompts=30"])
    assert other["trajectories"] != first["trajectories"] and other["train_filter"] != first["train_filter"]
    assert other["filter t=0.7 L=32"] != first["filter t=0.7 L=32"]
    assert other["vanilla L=32"] == first["vanilla L=32"], "a result that does not read the filter keeps its key"
    speed_only = keys(compose_cfg, ["train_filter.checkpoint_every_n_epochs=7"])
    assert speed_only["train_filter"] == first["train_filter"]


def test_comments_and_docstrings_do_not_change_a_code_digest_but_code_does():
    plain = "def f(x):\n    return x + 1\n"
    assert syntax_digest(plain) == syntax_digest('def f(x):\n    """Adds one."""\n    # why\n    return x  +  1\n')
    assert syntax_digest(plain) != syntax_digest("def f(x):\n    return x + 2\n")


def test_a_change_to_a_stage_s_code_gives_new_keys_downstream(compose_cfg, monkeypatch):
    before = keys(compose_cfg)
    original = artifacts.source_digest

    def edited(path: str) -> str:
        return "edited" if path == "pipeline/decoding/features.py" else original(path)

    monkeypatch.setattr(artifacts, "source_digest", edited)
    after = keys(compose_cfg)
    assert all(after[name] != before[name] for name in before), "features feed every decoding stage"
    monkeypatch.setattr(artifacts, "source_digest",
                        lambda path: "edited" if path == "pipeline/learning/filter.py" else original(path))
    filter_only = keys(compose_cfg)
    assert filter_only["trajectories"] == before["trajectories"]
    assert filter_only["train_filter"] != before["train_filter"]
    assert filter_only["filter t=0.7 L=32"] != before["filter t=0.7 L=32"]
    assert filter_only["vanilla L=32"] == before["vanilla L=32"]


def complete(root: Path, stage: str) -> list[Path]:
    return sorted(p.parent for p in (root / "artifacts" / stage).glob("*/manifest.json"))


@pytest.fixture(scope="module")
def micro_trajectories(micro_pipeline, tmp_path_factory) -> Path:
    """An output folder holding the micro experiment's trajectories only."""
    from tests.shared_runs import seed

    return seed(tmp_path_factory.mktemp("trajectories"), micro_pipeline[0], ("trajectories",))


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(source, target)
    return target


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_truncated_manifest_is_named_with_what_to_do(micro_trajectories, tmp_path):
    out = copy_of(micro_trajectories, tmp_path)
    (artifact,) = complete(out, "trajectories")
    manifest = artifact / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    line = one_line_error(run_cli(*MICRO, "stage=trajectories", f"output_dir={out}"))
    assert line.startswith(f"error: {manifest}: damaged manifest") and f"delete {artifact} and rerun" in line


def test_an_edited_manifest_missing_a_field_is_named(micro_trajectories, tmp_path):
    out = copy_of(micro_trajectories, tmp_path)
    (artifact,) = complete(out, "trajectories")
    data = json.loads((artifact / "manifest.json").read_text())
    del data["figures"]
    (artifact / "manifest.json").write_text(json.dumps(data))
    line = one_line_error(run_cli(*MICRO, "stage=trajectories", f"output_dir={out}"))
    assert "damaged manifest (missing figures)" in line


def test_a_truncated_shard_is_recomputed_or_under_reuse_only_named_with_what_to_do(micro_trajectories, tmp_path):
    out = copy_of(micro_trajectories, tmp_path)
    (artifact,) = complete(out, "trajectories")
    (arrow,) = (artifact / "shards").glob("*/*.arrow")
    original = arrow.read_bytes()
    arrow.write_bytes(original[:64])
    line = one_line_error(run_cli(*MICRO, "stage=train_filter", "reuse_only=true", f"output_dir={out}"))
    assert line.startswith(f"error: {arrow}: damaged artifact file (64 bytes where the manifest records")
    assert line.endswith("run `stage=trajectories` or drop reuse_only to recompute it")
    again = run_cli(*MICRO, "stage=trajectories", f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{arrow}: damaged artifact file (64 bytes where the manifest records" in again.stderr
    assert arrow.read_bytes() == original


def test_damaged_weights_are_named_with_what_to_do(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(PROJECT_ROOT / "models" / "checkpoints" / "tiny-arith", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = one_line_error(run_cli("stage=evaluate", f"model.path={model}", f"output_dir={tmp_path / 'out'}",
                                  "eval.num_prompts=2", "progress=false"))
    assert line.startswith(f"error: {weights}: not a safetensors file") and "re-download the model" in line


def test_a_full_disk_is_one_line_naming_the_path():
    import errno

    from pipeline.runtime.reporting import one_line

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/outputs/artifacts/x/shard")
        except OSError as disk:
            raise RuntimeError("saving the dataset failed") from disk
    except RuntimeError as error:
        assert one_line(error) == "/data/outputs/artifacts/x/shard: the disk is full; free space or set output_dir " \
                                  "to another disk"
    assert one_line(RuntimeError("a bug")) is None, "a bug keeps its traceback"


def replace_shard_labels(artifact: Path) -> None:
    """Hand-edit the trajectories (every label flipped) and record the new content in the manifest, as a forced
    or nondeterministic recompute under the same key would."""
    from datasets import load_from_disk

    (shard,) = (artifact / "shards").iterdir()
    data = load_from_disk(str(shard)).map(lambda row: {"label": [1 - x for x in row["label"]]})
    edited = shard.with_name("edited")
    data.save_to_disk(str(edited))
    shutil.rmtree(shard)
    edited.rename(shard)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.update(content_record(artifact))
    (artifact / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_replaced_trajectories_retrain_the_filter_and_recompute_what_read_it(micro_pipeline, tmp_path):
    out = copy_of(micro_pipeline[0], tmp_path)
    filters_before = {p.name: (p / "filter" / "filter.safetensors").read_bytes() for p in complete(out, "train_filter")}
    (artifact,) = complete(out, "trajectories")
    replace_shard_labels(artifact)
    again = run_cli(*MICRO, f"output_dir={out}", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recomputing: its input trajectories changed" in again.stderr
    assert again.stderr.count("recomputing: its input filter changed") == 2  # filter t=0.7, with and without EoTP
    assert "sweep" in again.stderr and "vanilla L=32 (nothing to compute)" in again.stderr.replace(
        "complete, reusing ", "")
    filters_after = {p.name: (p / "filter" / "filter.safetensors").read_bytes() for p in complete(out, "train_filter")}
    assert filters_after.keys() == filters_before.keys() and filters_after != filters_before
    third = run_cli(*MICRO, f"output_dir={out}", timeout=600)
    assert "recomputing" not in third.stderr and "computing in" not in third.stderr


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


TRAJECTORIES = [*MICRO, "stage=trajectories", "trajectories.num_prompts=48", "trajectories.batch_size=4"]


@pytest.mark.slow
def test_two_runs_on_one_output_folder_share_the_work(tmp_path, compose_cfg):
    out = tmp_path / "out"
    key = trajectories.spec(StageContext(compose_cfg(TRAJECTORIES[:1] + TRAJECTORIES[3:]))).key
    holder = out / "artifacts" / "trajectories" / f"{key}.shard-00000-of-00001.holder"  # the lock holder's note
    command = [sys.executable, "-m", "pipeline", *TRAJECTORIES, f"output_dir={out}"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(lambda: holder.exists() and holder.read_text().startswith("pid"))
    second = run_cli(*TRAJECTORIES, f"output_dir={out}")
    first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0 and second.returncode == 0, first_err[-2000:] + second.stderr[-2000:]
    assert "is computing it; waiting" in second.stderr
    assert "computing in" not in second.stderr and "already written, skipping" in second.stderr
    assert len(complete(out, "trajectories")) == 1 and not list(out.glob("artifacts/trajectories/*.partial"))


def test_listings_skip_manifests_of_the_older_format_and_name_damaged_ones(tmp_path):
    store = artifacts.ArtifactStore(tmp_path)
    current = store.materialize(artifacts.ArtifactSpec("demo", "code", {"x": 1}), lambda work: {"answer": 42})
    older = tmp_path / "artifacts" / "demo" / "oldkey"
    older.mkdir()
    (older / "manifest.json").write_text(json.dumps({"stage": "demo", "key": "oldkey", "version": 1}))
    assert [a.key for a in store.all("demo")] == [current.key]
    (older / "manifest.json").write_text("{")
    with pytest.raises(artifacts.InputError, match="damaged manifest"):
        store.all("demo")


@pytest.mark.parametrize("where", ["taking", "holding", "giving back"])
def test_a_ctrl_c_anywhere_in_a_lock_s_life_leaves_it_free_for_the_clean_up(tmp_path, monkeypatch, where):
    """The interrupt may land inside filelock's own acquire or release; the clean-up must still find the lock free."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    lock_file, sent = tmp_path / "key.lock", []

    class Interrupted(artifacts.FileLock):
        def acquire(self, *args, **kwargs):
            held = super().acquire(*args, **kwargs)
            if where == "taking":
                os.kill(os.getpid(), signal.SIGINT)  # arrives at the next bytecode: inside acquire, lock taken
            return held

        def release(self, *args, **kwargs):
            if where == "giving back" and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            return super().release(*args, **kwargs)

    monkeypatch.setattr(artifacts, "FileLock", Interrupted)
    try:
        with pytest.raises(KeyboardInterrupt), artifacts.file_lock(lock_file, "demo"):
            if where == "holding":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
    remove_unheld_lock(lock_file)
    assert not lock_file.exists() and not lock_file.with_suffix(".holder").exists()


def test_a_lock_whose_context_manager_was_cut_short_is_still_removed_by_the_clean_up(tmp_path):
    """A Ctrl-C landing in the context manager's own ``__enter__`` or ``__exit__`` leaves the generator suspended
    and the lock held by this process; the clean-up knows it by the holder's note and removes it."""
    lock_file = tmp_path / "key.lock"
    held = artifacts.file_lock(lock_file, "demo")
    held.__enter__()  # never exited, as when the interrupt lands before __exit__ resumes the generator
    assert lock_file.exists() and f"pid {os.getpid()} on " in lock_file.with_suffix(".holder").read_text()
    remove_unheld_lock(lock_file)
    assert not lock_file.exists() and not lock_file.with_suffix(".holder").exists()
    other = tmp_path / "other.lock"  # another process's lock is left alone
    other.touch()
    other.with_suffix(".holder").write_text("pid 999999 on a-host since 2026-01-01T00:00:00")
    with artifacts.FileLock(other):
        remove_unheld_lock(other)
        assert other.exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, compose_cfg):
    out = tmp_path / "out"
    key = trajectories.spec(StageContext(compose_cfg(MICRO[:1]))).key
    lock = out / "artifacts" / "trajectories" / f"{key}.shard-00000-of-00001.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    lock.with_suffix(".holder").write_text("pid 999999 on a-host since 2026-01-01T00:00:00")
    result = run_cli(*MICRO, "stage=trajectories", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "taking over the lock of a run that did not finish (pid 999999" in result.stderr
    assert len(complete(out, "trajectories")) == 1


FILTER = [*MICRO, "stage=train_filter", "train_filter.max_epochs=300", "train_filter.checkpoint_every_n_epochs=50"]


@pytest.mark.slow
def test_a_killed_filter_training_resumes_from_its_checkpoint_to_the_same_filter(micro_trajectories, tmp_path):
    killed, clean = copy_of(micro_trajectories, tmp_path / "killed"), copy_of(micro_trajectories, tmp_path / "clean")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *FILTER, f"output_dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: list(killed.glob("artifacts/train_filter/*.partial/checkpoints/last.ckpt")), timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not complete(killed, "train_filter"), "killed before the end"
    resumed = run_cli(*FILTER, f"output_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train_filter: resuming from" in resumed.stderr
    assert run_cli(*FILTER, f"output_dir={clean}").returncode == 0
    (a,), (b,) = complete(killed, "train_filter"), complete(clean, "train_filter")
    assert a.name == b.name
    assert (a / "filter" / "filter.safetensors").read_bytes() == (b / "filter" / "filter.safetensors").read_bytes()


def test_non_finite_features_are_refused_by_name(tmp_path):
    import numpy as np

    from pipeline.learning.trajectories import check_finite

    features = np.zeros((3, 4, 2), dtype=np.float32)
    features[1, 2, 1] = np.nan
    with pytest.raises(artifacts.InputError, match=r"non-finite values \(NaN or infinity\) in the features \['entropy"):
        check_finite(features, ["confidence", "entropy"], tmp_path)
    check_finite(features[..., :1], ["confidence"], tmp_path)


def test_a_non_finite_training_loss_stops_filter_training_in_one_line(micro_trajectories, tmp_path):
    out = copy_of(micro_trajectories, tmp_path)
    line = one_line_error(run_cli(*MICRO, "stage=train_filter", "train_filter.lr=1e30", f"output_dir={out}"))
    assert line.startswith("error: train_filter: the loss is nan at epoch") and "lower train_filter.lr" in line
    assert not complete(out, "train_filter")
