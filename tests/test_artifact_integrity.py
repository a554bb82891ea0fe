"""Reuse checks what an artifact holds, not only its sizes: a same-size edit is recomputed (or, where nothing may be
recomputed, named in one line), and identical runs give identical digests because incidental files (checkpoints,
training logs, timings) are left out of them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import pipeline.artifacts.store as artifacts
from pipeline.artifacts.store import ArtifactSpec, ArtifactStore, InputError
from tests.test_artifacts import MICRO, copy_of, one_line_error
from tests.test_cli import run_cli

SPEC = ArtifactSpec("demo", "code", {"x": 1})
RESULT = bytes(range(256)) * 4


def write_result(work: Path) -> dict:
    (work / "result.bin").write_bytes(RESULT)
    return {"answer": 42}


class Counting:
    """A compute function that records how often it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, work: Path) -> dict:
        self.calls += 1
        return write_result(work)


def flip_bytes(file: Path, offset: int | None = None) -> bytes:
    """Zero (or, where already zero, set) 16 bytes in the middle of ``file``, keeping its size; the original bytes."""
    original = file.read_bytes()
    start = len(original) // 2 if offset is None else offset
    damaged = bytearray(original)
    damaged[start:start + 16] = bytes(0xFF if b == 0 else 0 for b in original[start:start + 16])
    file.write_bytes(bytes(damaged))
    assert file.stat().st_size == len(original) and file.read_bytes() != original
    return original


@pytest.fixture
def written(tmp_path) -> artifacts.Artifact:
    return ArtifactStore(tmp_path).materialize(SPEC, write_result)


def test_the_manifest_records_each_file_s_size_and_sha256(written):
    import hashlib

    assert written.manifest["files"] == {"result.bin": len(RESULT)}
    assert written.manifest["file_digests"] == {"result.bin": hashlib.sha256(RESULT).hexdigest()}
    assert written.manifest["format"] == artifacts.FORMAT == 3


def test_a_same_size_edit_is_recomputed_with_a_log_naming_the_file(written, tmp_path, caplog):
    file = written.path / "result.bin"
    flip_bytes(file)
    compute = Counting()
    with caplog.at_level(logging.INFO, logger="pipeline.artifacts.store"):
        again = ArtifactStore(tmp_path).materialize(SPEC, compute)  # a new store: a new invocation
    assert compute.calls == 1 and file.read_bytes() == RESULT
    assert again.digest == written.digest
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"demo {SPEC.key}: {file}: damaged artifact file (same size, but its sha256 differs from the "
                        f"manifest's: changed after it was written); recomputing the artifact"]
    assert not list(written.path.parent.glob(".*old-*")), "the damaged artifact was replaced, nothing left beside it"


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_missing_or_resized_file_is_recomputed_rather_than_a_crash(written, tmp_path, damage, caplog):
    file = written.path / "result.bin"
    if damage == "deleted":
        file.unlink()
    else:
        file.write_bytes(RESULT[:10])
    compute = Counting()
    ArtifactStore(tmp_path).materialize(SPEC, compute)
    assert compute.calls == 1 and file.read_bytes() == RESULT
    assert f"{file}: damaged artifact file ({'missing' if damage == 'deleted' else '10 bytes'}" in caplog.text


def test_where_nothing_may_be_recomputed_a_same_size_edit_is_an_error_naming_the_file(written, tmp_path):
    file = written.path / "result.bin"
    flip_bytes(file)
    store = ArtifactStore(tmp_path)
    with pytest.raises(InputError) as reuse_only:
        store.check_upstream(SPEC, reuse_only=True)
    assert reuse_only.value.path == file
    assert str(reuse_only.value).endswith("run `stage=demo` or drop reuse_only to recompute it")
    assert store.check_upstream(SPEC, reuse_only=False) is None, "allowed to recompute: treated as absent"
    with pytest.raises(InputError) as listing:
        store.all("demo")
    assert listing.value.path == file
    assert str(listing.value).endswith(f"rerun `stage=demo` with the settings that made it to recompute it, "
                                       f"or delete {written.path}")
    assert store.all("demo", where=lambda artifact: artifact.key != SPEC.key) == [], \
        "an artifact the caller leaves out is not checked"


def test_size_verification_does_not_see_a_same_size_edit_but_sees_a_resized_file(written, tmp_path):
    file = written.path / "result.bin"
    flip_bytes(file)
    compute = Counting()
    store = ArtifactStore(tmp_path, verify="size")
    assert store.materialize(SPEC, compute).digest == written.digest and compute.calls == 0, \
        "the cheap mode trusts a file of the recorded size"
    assert [a.key for a in store.all("demo")] == [SPEC.key]
    file.write_bytes(b"short")
    ArtifactStore(tmp_path, verify="size").materialize(SPEC, compute)
    assert compute.calls == 1 and file.read_bytes() == RESULT


def test_an_unknown_verification_mode_is_a_setting_error(tmp_path):
    with pytest.raises(artifacts.ConfigError, match="verify_artifacts=all: allowed: content, size"):
        ArtifactStore(tmp_path, verify="all")


def test_an_older_manifest_without_file_digests_is_checked_as_a_whole(written, tmp_path, caplog):
    manifest = json.loads((written.path / "manifest.json").read_text())
    del manifest["file_digests"]
    manifest["format"] = 2
    (written.path / "manifest.json").write_text(json.dumps(manifest))
    assert ArtifactStore(tmp_path).load(SPEC) is not None, "an intact older artifact is reused"
    flip_bytes(written.path / "result.bin")
    assert ArtifactStore(tmp_path, verify="size").load(SPEC) is not None
    assert ArtifactStore(tmp_path).load(SPEC) is None
    assert f"{written.path}: damaged artifact (its content differs from the manifest's digest" in caplog.text


def test_a_file_is_hashed_once_per_store_and_again_by_a_new_one(written, tmp_path, monkeypatch):
    hashed: list[Path] = []
    original = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda path: hashed.append(path) or original(path))
    store = ArtifactStore(tmp_path)
    for _ in range(3):
        assert store.load(SPEC) is not None
        assert [a.key for a in store.all("demo")] == [SPEC.key]
    assert hashed == [written.path / "result.bin"]
    assert ArtifactStore(tmp_path).load(SPEC) is not None and len(hashed) == 2
    built = Counting()
    fresh = ArtifactStore(tmp_path)
    fresh.materialize(ArtifactSpec("demo", "code", {"x": 2}), built)
    assert len(hashed) == 3
    fresh.load(ArtifactSpec("demo", "code", {"x": 2}))
    assert len(hashed) == 3, "what finalize hashed is not hashed again when read back"


def test_incidental_files_are_neither_recorded_nor_digested(tmp_path):
    def run(name: str, checkpoint: bytes) -> artifacts.Artifact:
        def compute(work: Path) -> dict:
            for name in ("checkpoints/last.ckpt", "model.ckpt", "logs/version_0/metrics.csv",
                         "lightning_logs/version_0/hparams.yaml", "shards/s0/timing.json"):
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                (work / name).write_bytes(checkpoint)
            (work / "shards" / "s0" / "data.arrow").write_bytes(RESULT)
            return write_result(work)

        return ArtifactStore(tmp_path / name).materialize(SPEC, compute)

    first, second = run("one", b"saved at 10:00"), run("two", b"saved at 11:00, from epoch 3")
    assert first.digest == second.digest
    assert sorted(first.manifest["files"]) == sorted(first.manifest["file_digests"]) == ["result.bin",
                                                                                        "shards/s0/data.arrow"]
    assert (first.path / "checkpoints" / "last.ckpt").exists(), "incidental files stay in the folder"
    shutil.rmtree(first.path / "checkpoints")
    assert ArtifactStore(tmp_path / "one").load(SPEC) is not None, "and may be deleted"


# End to end, through the CLI, on copies of one uninterrupted micro run.
TIMED_FIGURES = {"seconds", "forward_seconds", "seconds_over_forward", "minutes_per_1000_prompts", "tokens_per_s",
                 "wall_time_s"}
TIMED_FILES = {"frontier.csv", "frontier.md", "frontier.png"}  # hold timings too


@pytest.fixture(scope="module")
def clean_run(micro_pipeline) -> Path:
    return micro_pipeline[0]


def artifact_of(out: Path, stage: str, label: str | None = None) -> Path:
    (found,) = [p.parent for p in (out / "artifacts" / stage).glob("*/manifest.json")
                if label is None or json.loads(p.read_text())["figures"].get("label") == label]
    return found


def outcome(out: Path) -> dict[str, dict]:
    """What a run computed, per artifact: its figures and the digests of its files, wall-clock timings aside."""
    found = {}
    for path in sorted(out.glob("artifacts/*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        found[f"{manifest['stage']}/{manifest['key']}"] = {
            "figures": {k: v for k, v in manifest["figures"].items() if k not in TIMED_FIGURES},
            "files": {k: v for k, v in manifest["file_digests"].items() if Path(k).name not in TIMED_FILES},
        }
    return found


DAMAGED = [("trajectories", None, "shards/*/data-*.arrow"), ("train_filter", None, "filter/filter.safetensors"),
           ("sweep", "vanilla L=32", "tokens.pt")]


@pytest.mark.parametrize(("stage", "label", "pattern"), DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_same_size_edit_is_recomputed_to_the_uninterrupted_run_s_results(clean_run, tmp_path, stage, label,
                                                                           pattern):
    out = copy_of(clean_run, tmp_path)
    (file,) = artifact_of(out, stage, label).glob(pattern)
    original = flip_bytes(file)
    again = run_cli(*MICRO, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{file}: damaged artifact file (same size, but its sha256 differs" in again.stderr
    assert file.read_bytes() == original
    assert outcome(out) == outcome(clean_run)
    if stage == "trajectories":  # the same trajectories again (timings aside): the filter is still current
        assert "its input trajectories changed" not in again.stderr
    if stage == "train_filter":  # the same filter again (checkpoints aside): its sweeps are still current
        assert "its input filter changed" not in again.stderr


def test_with_reuse_only_a_same_size_edit_is_one_line_naming_the_file(clean_run, tmp_path):
    out = copy_of(clean_run, tmp_path)
    tokens = artifact_of(out, "sweep", "vanilla L=32") / "tokens.pt"
    flip_bytes(tokens)
    line = one_line_error(run_cli(*MICRO, "stage=aggregate", "reuse_only=true", f"output_dir={out}"))
    assert line == (f"error: {tokens}: damaged artifact file (same size, but its sha256 differs from the manifest's: "
                    f"changed after it was written); run `stage=sweep` or drop reuse_only to recompute it")
    weights = artifact_of(out, "train_filter") / "filter" / "filter.safetensors"
    flip_bytes(weights)
    line = one_line_error(run_cli(*MICRO, "stage=sweep", "reuse_only=true", f"output_dir={out}"))
    assert line.startswith(f"error: {weights}: damaged artifact file (same size")


def test_size_verification_reuses_a_same_size_edit(clean_run, tmp_path):
    out = copy_of(clean_run, tmp_path)
    flip_bytes(artifact_of(out, "sweep", "vanilla L=32") / "tokens.pt")
    again = run_cli(*MICRO, "verify_artifacts=size", f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "damaged" not in again.stderr and "computing in" not in again.stderr


def test_identical_runs_give_identical_digests_except_for_the_timed_frontier(clean_run, tmp_path):
    other = tmp_path / "out"
    assert run_cli(*MICRO, f"output_dir={other}").returncode == 0
    first, second = ({p.parent.relative_to(out): json.loads(p.read_text())
                      for p in out.glob("artifacts/*/*/manifest.json")} for out in (clean_run, other))
    assert first.keys() == second.keys()
    for name, a in first.items():
        b = second[name]
        if a["stage"] != "aggregate":  # the frontier's tables and plot show wall-clock speedups
            assert a["digest"] == b["digest"], name
            continue
        changed = {f for f in a["file_digests"] if a["file_digests"][f] != b["file_digests"][f]}
        assert changed <= TIMED_FILES, name
    for name, a in first.items():
        if a["stage"] != "sweep":
            continue
        timings = [json.loads((out / name / "timing.json").read_text()) for out in (clean_run, other)]
        assert all(t["wall_time_s"] > 0 and len(t["sample_seconds"]) == a["figures"]["num_samples"] for t in timings)
        assert a["figures"]["wall_time_s"] == timings[0]["wall_time_s"], "the manifest's figures keep the timings"
