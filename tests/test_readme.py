"""The documented commands run as written: each ``python -m pipeline`` line of a fenced bash block in the README or
in the documentation (``docs/**/*.md``), sized down to the micro experiment, composes and validates, and every one
that does not need a Slurm cluster runs to the end."""

from __future__ import annotations

import re
import shlex

import pytest

from pipeline.cli import job_overrides, preflight
from pipeline.configuration.hydra import PROJECT_ROOT
from tests.shared_runs import seed
from tests.test_cli import run_cli

SIZED_DOWN = {  # per stage: overrides that keep a documented command to seconds
    "pretrain": ["pretrain.max_steps=2", "pretrain.batch_size=4", "pretrain.architecture.hidden_size=16",
                 "pretrain.architecture.num_hidden_layers=1", "pretrain.architecture.num_attention_heads=2",
                 "pretrain.architecture.intermediate_size=32", "pretrain.val_every=1", "pretrain.val_prompts=2"],
    "evaluate": ["eval.num_prompts=4"],
    "train_policy": ["train_policy.updates=2", "train_policy.prompts_per_update=2", "train_policy.group_size=2",
                     "train_policy.num_prompts=4", "train_policy.val_prompts=4", "train_policy.knob=[0.0,4.0]"],
    "benchmark": ["benchmark.num_prompts=4", "benchmark.warmup=1"],
    "score_references": ["references.num_prompts=8"],
}
SIZED_DOWN_MODELS = {  # per experiment timing a real architecture: a few layers of a few dimensions
    "+experiment=speed_llada_cpu": ["model.architecture.d_model=32", "model.architecture.n_heads=2",
                                    "model.architecture.n_kv_heads=2", "model.architecture.n_layers=1",
                                    "model.architecture.mlp_hidden_size=64", "sweep.gen_lengths=[64]"],
    "+experiment=speed_dream_cpu": ["model.architecture.hidden_size=32", "model.architecture.num_attention_heads=2",
                                    "model.architecture.num_key_value_heads=1",
                                    "model.architecture.num_hidden_layers=1", "model.architecture.intermediate_size=64",
                                    "sweep.gen_lengths=[64]"],
}


DOCUMENTED = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]


def bash_lines(path) -> list[str]:
    """Every line of the fenced bash blocks of one Markdown file."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
    return [line for block in blocks for line in block.splitlines()]


def documented_commands() -> list[str]:
    """Every ``python -m pipeline`` line of a fenced bash block in the README and the documentation (the set-up
    lines included), each once, in the order they are first documented."""
    commands = []
    for line in (line for path in DOCUMENTED for line in bash_lines(path)):
        if "python -m pipeline " in line:
            command = line.split("python -m pipeline ", 1)[1].strip()
            if command not in commands:
                commands.append(command)
    return commands


COMMANDS = documented_commands()


def sized_down(command: str, tmp_path) -> list[str]:
    args = [re.sub(r"^\+experiment=tiny\w*$", "+experiment=micro", a) for a in shlex.split(command)]
    stage = next((a.split("=", 1)[1] for a in args if a.startswith("stage=")), "all")
    smaller = SIZED_DOWN.get(stage, []) + [o for a in args for o in SIZED_DOWN_MODELS.get(a, [])]
    if any(a.startswith("pretrain.init_from=") for a in args):  # a warm start keeps the saved architecture
        smaller = [a for a in smaller if not a.startswith("pretrain.architecture.")]
    return [*args, *smaller, f"output_dir={tmp_path}", "logger=none", "progress=false",
            f"pretrain.save_to={tmp_path / 'model'}"]


def test_the_readme_documents_the_commands_this_test_runs():
    readme = bash_lines(PROJECT_ROOT / "README.md")
    assert any(line.endswith("&& python -m pipeline +experiment=tiny") for line in readme)  # set up and go
    assert any(line.endswith("&& python -m pytest -q") for line in readme)  # install and run the tests
    assert len(DOCUMENTED) > 1, "the documentation pages (docs/*.md) were not found"
    assert len(COMMANDS) >= 7 and "+experiment=tiny" in COMMANDS and "stage=pretrain" in COMMANDS


@pytest.mark.parametrize("command", [c for c in COMMANDS if "slurm" in c])
def test_every_documented_cluster_command_composes_and_validates(command, tmp_path):
    """The commands that need a Slurm cluster, checked as far as this machine can (the others run below, and a
    run composes and validates first)."""
    args = sized_down(command, tmp_path)
    multirun = "-m" in args
    preflight([a for a in args if a != "-m"], multirun, None)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if "slurm" not in c])
def test_every_documented_command_runs_as_written(command, tmp_path, micro_pipeline):
    """Each from the micro experiment's trajectories and filter (made once per session, and checked there), so
    each computes what its own stage adds."""
    seed(tmp_path, micro_pipeline[0])
    args = sized_down(command, tmp_path)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-4000:]
    if "-m" in args and "stage=sweep" in args:  # a multirun sweep, on any launcher: one result per job
        results = list((tmp_path / "artifacts" / "sweep").glob("*/result.json"))
        assert len(results) == len(job_overrides([a for a in args if a != "-m"], True)) > 1, result.stderr[-4000:]
