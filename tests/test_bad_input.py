"""Bad settings and damaged inputs through the command line: one line, the right exit status, the faulty setting or
path named, no traceback, and nothing left in the output folder; Ctrl-C the same with status 130."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.configuration.hydra import PROJECT_ROOT
from pipeline.runtime.reporting import one_line
from tests.shared_runs import UPSTREAM, seed
from tests.test_cli import MICRO, as_in_a_terminal, run_cli

TINY = PROJECT_ROOT / "models" / "checkpoints" / "tiny-arith"
# saved filters whose filter.json (written by a trained 8-position MLP filter) holds these fields instead
FILTER_FAULTS = {"filter-unknown-feature": {"features": ["confidense"]}, "filter-threshold-text": {"threshold": "high"},
                 "filter-threshold-high": {"threshold": 7.5}, "filter-colour": {"colour": "blue"},
                 "filter-zero-heads": {"architecture": "transformer", "num_heads": 0},
                 "filter-three-heads": {"architecture": "transformer", "hidden_size": 32, "num_heads": 3},
                 "filter-other-length": {"block_length": 16}}
# LLaDA checkpoints in the official layout whose config.json holds these fields instead
LLADA_FAULTS = {"llada-layers-text": {"n_layers": "two"}, "llada-five-heads": {"n_heads": 5},
                "llada-three-kv-heads": {"n_kv_heads": 3}, "llada-mask-outside": {"mask_token_id": 200000},
                "llada-sequential": {"block_type": "sequential"}}
LLADA_SMALL = ["model=llada_random", "model.architecture.d_model=32", "model.architecture.n_heads=2",
               "model.architecture.n_kv_heads=2", "model.architecture.n_layers=2",
               "model.architecture.mlp_hidden_size=64"]
DREAM_SMALL = ["model=dream_random", "model.architecture.hidden_size=32", "model.architecture.num_attention_heads=2",
               "model.architecture.num_key_value_heads=1", "model.architecture.num_hidden_layers=2",
               "model.architecture.intermediate_size=64"]
# an lm-eval task of train and test prompts only
TWO_SPLIT_TASK = """task: arith_two_splits
dataset_path: json
dataset_kwargs:
  data_files:
    train: {folder}/train.jsonl
    test: {folder}/test.jsonl
training_split: train
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["#"]
metric_list:
  - metric: exact_match
"""


def llada_checkpoints(root: Path) -> None:
    """A tiny official-layout LLaDA checkpoint, copies with a faulty config.json (the weights linked, not copied)
    and one whose first shard holds a tensor the index does not list."""
    from safetensors.torch import load_file, save_file

    from tests.standins import write_llada_official

    official = write_llada_official(root / "llada", shards=2)
    config = json.loads((official / "config.json").read_text())
    for name, change in LLADA_FAULTS.items():
        (root / name).mkdir()
        for file in official.iterdir():
            (root / name / file.name).symlink_to(file)
        (root / name / "config.json").unlink()
        (root / name / "config.json").write_text(json.dumps({**config, **change}))
    shutil.copytree(official, root / "llada-extra-tensor")
    shard = root / "llada-extra-tensor" / "model-00001-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["model.transformer.blocks.0.q_norm.weight"] = next(iter(tensors.values())).new_ones(16)
    save_file(tensors, shard, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """A folder of broken inputs: model folders, saved filters, JSON-lines files."""
    root = tmp_path_factory.mktemp("damaged")
    for name in ("model-bad-config", "model-bad-weights"):
        shutil.copytree(TINY, root / name)
    (root / "model-bad-config" / "config.json").write_text("{garbage")
    weights = root / "model-bad-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    filter_json = {"block_length": 8, "features": ["confidence"], "num_layers": 2}
    for name in ("filter-bad-json", "filter-not-a-filter", "filter-bad-weights"):
        (root / name).mkdir()
    (root / "filter-bad-json" / "filter.json").write_text('{"block_length": 8')
    (root / "filter-not-a-filter" / "filter.json").write_text('{"colour": "blue"}')
    (root / "filter-bad-weights" / "filter.json").write_text(json.dumps(filter_json))
    (root / "filter-bad-weights" / "filter.safetensors").write_bytes(os.urandom(300))
    from models.filter import BlockFilter, FilterConfig

    BlockFilter(FilterConfig(block_length=8)).save(root / "filter-good")
    saved = json.loads((root / "filter-good" / "filter.json").read_text())
    for name, change in FILTER_FAULTS.items():
        shutil.copytree(root / "filter-good", root / name)
        (root / name / "filter.json").write_text(json.dumps({**saved, **change}))
    llada_checkpoints(root)
    (root / "lm_eval_tasks").mkdir()
    for split in ("train", "test"):
        (root / "lm_eval_tasks" / f"{split}.jsonl").write_text('{"prompt": "12+3=", "answer": "15"}\n')
    (root / "lm_eval_tasks" / "arith_two_splits.yaml").write_text(TWO_SPLIT_TASK.format(folder=root / "lm_eval_tasks"))
    (root / "empty.jsonl").write_text("")
    (root / "accents.jsonl").write_text('{"prompt": "12+3=", "answer": "15"}\n{"prompt": "d\\u00e9j\\u00e0", '
                                        '"answer": "1"}\n')
    (root / "slurm" / "micro").mkdir(parents=True)
    (root / "slurm" / "micro" / "latest.json").write_text("{not json")
    for name, said in (("gres", "Invalid generic resource (gres) specification"),
                       ("down", "Unable to contact slurm controller (connect failure)")):
        bin_dir = root / f"bin-{name}"
        bin_dir.mkdir()
        (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho 'sbatch: error: Batch job submission failed: {said}' >&2\n"
                                        "exit 1\n")
        (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
        for tool in ("sbatch", "srun"):
            (bin_dir / tool).chmod(0o755)
    return root


# (arguments, the start of the one-line message); found before Hydra starts. "{d}" is the damaged-inputs folder.
REFUSED_BEFORE_START = [
    ([MICRO, "decode.temperature=nan"], "decode.temperature=nan: allowed: a finite number"),
    ([MICRO, "decode.temperature=inf"], "decode.temperature=inf: allowed: a finite number"),
    ([MICRO, "train_filter.weight_decay=nan"], "train_filter.weight_decay=nan: allowed: a finite number"),
    ([MICRO, "aggregate.tolerance=-inf"], "aggregate.tolerance=-inf: allowed: a finite number"),
    ([MICRO, "sweep.grid=[{policy: threshold, threshold: [0.5, nan]}]"],
     "sweep.grid[0].threshold[1]=nan: allowed: a finite number"),
    ([MICRO, "+task@trajectories.task=chain", "trajectories.task.seed=-3"],
     "trajectories.task.seed=-3: allowed: an integer from 0 to 4294967295"),
    ([MICRO, "seed=-1"], "seed=-1: allowed: an integer from 0 to 4294967295"),
    ([MICRO, "seed=99999999999999"], "seed=99999999999999: allowed: an integer from 0 to 4294967295"),
    ([MICRO, "decode.seed=4294967296"], "decode.seed=4294967296: allowed: an integer from 0 to 4294967295"),
    ([MICRO, "output_dir=''"], "output_dir='': allowed: a folder path"),
    ([MICRO, "output_dir=/proc/x"], "output_dir=/proc/x: /proc refuses new files"),
    ([MICRO, "verify_artifacts=never"], "verify_artifacts=never: allowed: content, size"),
    ([MICRO, "decode.block_length=7"], "decode.block_length=7: must divide decode.gen_length=32"),
    ([MICRO, "decode.threshold=[0.5"], "decode.threshold=[0.5: not a valid override"),
    ([MICRO, "task=jsonl", "task.path={d}/empty.jsonl"], "{d}/empty.jsonl: holds no examples"),
    ([MICRO, "model.path={d}/model-bad-config"], "{d}/model-bad-config/config.json: not a readable JSON file"),
    ([MICRO, "model.path={d}/model-bad-weights"], "{d}/model-bad-weights/model.safetensors: damaged safetensors"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-bad-json"],
     "{d}/filter-bad-json/filter.json: not a readable JSON file"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-not-a-filter"],
     "{d}/filter-not-a-filter/filter.json: not a saved filter's description (no block_length, features)"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-bad-weights"],
     "{d}/filter-bad-weights/filter.safetensors: not a safetensors file"),
    ([MICRO, "sweep.grid=[{policy: filter, filter_path: '{d}/filter-bad-weights'}]"],
     "{d}/filter-bad-weights/filter.safetensors: not a safetensors file"),
    (["stage=pretrain", "pretrain.init_from={d}/model-bad-config"],
     "{d}/model-bad-config/config.json: not a readable JSON file"),
    # saved filters (and policies, the same files): every field of filter.json, its tensors against it
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-unknown-feature"],
     '{d}/filter-unknown-feature/filter.json: features=["confidense"]: allowed: a non-empty list of confidence, '),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-threshold-text"],
     '{d}/filter-threshold-text/filter.json: threshold="high": allowed: a number in (0, 1] (or null); point '),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-threshold-high"],
     "{d}/filter-threshold-high/filter.json: threshold=7.5: allowed: a number in (0, 1] (or null)"),
    (["stage=evaluate", "decode=rl_filter", "decode.filter_path={d}/filter-colour"],
     "{d}/filter-colour/filter.json: colour=\"blue\": no such field; allowed: block_length, features, num_layers"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-zero-heads"],
     "{d}/filter-zero-heads/filter.json: num_heads=0: allowed: an integer >= 1"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-three-heads"],
     "{d}/filter-three-heads/filter.json: num_heads=3: allowed: a divisor of the hidden size (32)"),
    (["stage=evaluate", "decode=filter", "decode.filter_path={d}/filter-other-length"],
     "{d}/filter-other-length/filter.safetensors: tensor 'net.0.bias' has shape [8], filter.json gives [16]"),
    ([MICRO, "sweep.grid=[{policy: filter, filter_path: '{d}/filter-threshold-high'}]"],
     "{d}/filter-threshold-high/filter.json: threshold=7.5: allowed"),
    # a native checkpoint's config.json and its shards
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-layers-text"],
     '{d}/llada-layers-text/config.json: n_layers="two": allowed: an integer >= 1; re-download the model'),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-five-heads"],
     "{d}/llada-five-heads/config.json: n_heads=5: allowed: a divisor of d_model (16)"),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-three-kv-heads"],
     "{d}/llada-three-kv-heads/config.json: n_kv_heads=3: allowed: a divisor of n_heads (4)"),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-mask-outside"],
     "{d}/llada-mask-outside/config.json: mask_token_id=200000: allowed: a token id from 0 to vocab_size - 1 "
     "(126463)"),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-sequential"],
     '{d}/llada-sequential/config.json: block_type="sequential": allowed: "llama" (the native LLaDA implementation'),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada-extra-tensor"],
     "{d}/llada-extra-tensor/model-00001-of-00002.safetensors: unexpected tensor "
     "'model.transformer.blocks.0.q_norm.weight' (not in the index; 1 such)"),
    (["stage=evaluate", "model=llada_8b_instruct", "model.path={d}/llada", "model.end_of_turn_ids=[126348,130000]"],
     "model.end_of_turn_ids=[126348, 130000]: allowed: token ids from 0 to 126463 (vocab_size=126464 in "
     "{d}/llada/config.json)"),
    # the random-weight presets: the same rules on model.architecture, and the weights' size before allocating
    (["stage=evaluate", *LLADA_SMALL, "model.architecture.n_heads=3"],
     "model.architecture.n_heads=3: allowed: a divisor of d_model (32)"),
    (["stage=evaluate", *LLADA_SMALL, "model.architecture.n_kv_heads=3"],
     "model.architecture.n_kv_heads=3: allowed: a divisor of n_heads (2)"),
    (["stage=evaluate", *LLADA_SMALL, "model.architecture.n_layers=two"],
     "model.architecture.n_layers=two: allowed: an integer >= 1"),
    (["stage=evaluate", *LLADA_SMALL, "model.architecture.vocab_size=1000", "model.architecture.embedding_size=1000"],
     "model.mask_token_id=126336: allowed: token ids from 96 to 999 (model.architecture.vocab_size=1000; the "
     "placeholder tokenizer gives ids below 96 to printable characters)"),
    (["stage=evaluate", "model=llada_random", "model.architecture.vocab_size=1000000000",
      "model.architecture.embedding_size=1000000000"],
     "model.architecture.embedding_size=1000000000: about 29.8 TiB of weights in float32 (8.2T parameters); "),
    (["stage=benchmark", *DREAM_SMALL, "model.architecture.num_attention_heads=3"],
     "model.architecture.num_attention_heads=3: allowed: a divisor of hidden_size (32)"),
    (["stage=benchmark", *DREAM_SMALL, "model.architecture.num_key_value_heads=3"],
     "model.architecture.num_key_value_heads=3: allowed: a divisor of num_attention_heads (2)"),
    (["stage=benchmark", "model=dream_random", "model.architecture.vocab_size=1000000000"],
     "model.architecture.vocab_size=1000000000: about 26.1 TiB of weights in float32 (7.2T parameters); "),
    # settings a later stage needs, checked before the first stage runs
    ([MICRO, "stage=train_filter", "trajectories.num_prompts=8"],
     "trajectories.num_prompts=8: too few prompts for train_filter: the 80/10/10 split by prompt (seed=0) leaves"),
    ([MICRO, "stage=train_policy", "trajectories.num_prompts=8", "seed=2"],
     "trajectories.num_prompts=8: too few prompts for train_filter: the 80/10/10 split by prompt (seed=2) leaves"),
    ([MICRO, "stage=train_policy", "task=lm_eval", "task.lm_eval_task=arith_two_splits",
      "task.include_path={d}/lm_eval_tasks"],
     "train_policy.split=validation: lm-eval's arith_two_splits has no validation split; allowed: train, test"),
]


@pytest.mark.parametrize("args,message", REFUSED_BEFORE_START, ids=[" ".join(a) for a, _ in REFUSED_BEFORE_START])
def test_refused_before_start_in_one_line_writing_nothing(tmp_path, damaged, args, message):
    out = tmp_path / "out"
    args = [a.replace("{d}", str(damaged)) for a in args]
    began = time.monotonic()
    result = run_cli(f"output_dir={out}", *args, "progress=false", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0], "one line, no traceback"
    assert result.stderr.startswith(f"error: {message.replace('{d}', str(damaged))}"), result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written, here or in the output folder"
    assert time.monotonic() - began < 60


# Found only once the run has started: the same one line, and nothing left behind.
REFUSED_AFTER_START = [
    (["stage=evaluate", "task=jsonl", "task.path={d}/accents.jsonl", "eval.num_prompts=2"], {},
     "{d}/accents.jsonl:2: the prompt 'déjà' holds characters the model's tokenizer lacks: 'djàé'"),
    (["stage=evaluate", "device=cuda:99", "eval.num_prompts=2"], {}, "device=cuda:99: "),
    (["stage=evaluate", "task=gsm8k", "eval.num_prompts=2"], {"HF_HOME": "{d}/empty-hub-cache"},
     "openai/gsm8k: not in the local Hugging Face cache"),
    ([MICRO, "launcher=slurm"], {"PATH": "{d}/bin-gres"},
     "launcher=slurm: sbatch refused the trajectories job: Batch job submission failed: Invalid generic resource"),
    ([MICRO, "launcher=slurm"], {"PATH": "{d}/bin-down"},
     "launcher=slurm: sbatch refused the trajectories job: Batch job submission failed: Unable to contact slurm"),
]


@pytest.mark.parametrize("args,env,message", REFUSED_AFTER_START, ids=[" ".join(a) for a, _, _ in REFUSED_AFTER_START])
def test_refused_after_start_in_one_line_leaving_nothing(tmp_path, damaged, args, env, message):
    out = tmp_path / "out"
    args = [a.replace("{d}", str(damaged)) for a in args]
    env = {k: v.replace("{d}", str(damaged)) for k, v in env.items()}
    if "PATH" in env:
        env["PATH"] += f":{os.environ['PATH']}"
    result = run_cli(f"output_dir={out}", *args, "progress=false", "logger=none", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {message.replace('{d}', str(damaged))}"), result.stderr
    assert sum(line.startswith("error:") or "sbatch:" in line for line in lines) == 1, "said once"
    assert result.stdout == ""
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


def test_a_damaged_submission_record_is_named_by_status(tmp_path, damaged):
    out = tmp_path / "out"
    shutil.copytree(damaged / "slurm", out / "slurm")
    before = sorted(out.rglob("*"))
    result = run_cli(f"output_dir={out}", MICRO, "stage=status", "launcher=slurm", "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {out}/slurm/micro/latest.json: not a readable JSON file"), result.stderr
    assert result.stdout == ""
    assert sorted(out.rglob("*")) == before, "nothing added"


def test_a_full_disk_names_the_output_folder_when_the_system_names_no_file():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert one_line(full, "output_dir=/data/out") == "output_dir=/data/out: the disk is full; free space or set " \
                                                     "output_dir to another disk"
    named = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.arrow")
    assert one_line(named, "output_dir=/data/out").startswith("/data/out/x.arrow: the disk is full")


def interrupt(args: list[str], after: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI, send SIGINT (Ctrl-C) once a stderr line contains ``after``, and collect the result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_in_a_terminal)
    seen = []
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        seen.append(line)
        if after in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    stdout, rest = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(seen) + rest)


@pytest.mark.parametrize("stage,after", [("trajectories", "shard-00000-of-00003 written"), ("sweep", "written to"),
                                         ("train_filter", "train_filter: epoch")])
def test_ctrl_c_says_so_in_one_line_and_a_rerun_resumes(tmp_path, stage, after, request):
    """Interrupted after its first finished piece (a shard, a setting): the piece stays, the rerun finishes. The
    stages after trajectories start from the session's micro upstream, so only the interrupted stage computes."""
    out = tmp_path / "out"
    args = [f"output_dir={out}", MICRO, f"stage={stage}", "progress=false", "logger=none",
            "sweep.num_prompts=8", "sweep.grid=[{policy: vanilla}, {policy: threshold, threshold: [0.7, 0.9]}]"]
    if stage == "trajectories":
        args.append("trajectories.num_shards=3")
    else:
        seed(out, request.getfixturevalue("micro_pipeline")[0], UPSTREAM[: UPSTREAM.index(stage)]
             if stage in UPSTREAM else UPSTREAM)
    result = interrupt(args, after, tmp_path)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted: nothing was left half-written")
    assert not list(out.glob("artifacts/*/*.lock")), "no stray lock files"
    assert not list(out.rglob("*.tmp")), "no half-written file"
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = {"trajectories": "shard-00000-of-00003 already written, skipping", "sweep": "complete, reusing",
               "train_filter": "complete, reusing"}[stage]  # (train_filter: its trajectories, finished before)
    assert resumed in again.stderr
    assert list(out.glob(f"artifacts/{stage}/*/manifest.json"))
