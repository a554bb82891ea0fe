"""Shared fixtures: a seeded random micro model (any weights exercise the engine) and the shipped checkpoint.

The suite runs offline, as on a cluster's compute nodes: the Hugging Face libraries read their offline switches when
first imported, so they are set here before any import, and the command lines the tests start inherit them. A test
that needs them unset says so with monkeypatch.

Under pytest-xdist each worker gives torch its share of the cores (one thread each with three workers on two cores):
torch's default, a thread per core in every worker, oversubscribes the machine, and its threads then wait on one
another at every operation (the decoding tests ran several times slower). The command lines the tests start run
with ``OMP_NUM_THREADS=1`` already (``tests.test_cli.run_cli``).
"""
# ruff: noqa: E402  (the switches must be set before the imports below load the Hugging Face libraries)

from __future__ import annotations

import os

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
os.environ.update(dict.fromkeys(OFFLINE, "1"))

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

if os.environ.get("PYTEST_XDIST_WORKER"):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

from models import DiffusionLM, DiffusionLMConfig
from models.tokenizer import build_char_tokenizer
from pipeline.configuration.hydra import PROJECT_ROOT, register

SHIPPED = PROJECT_ROOT / "models" / "checkpoints" / "tiny-arith"
register()

# The longest files first, so that the workers finish together: pytest-xdist's ``--dist loadfile`` (with
# ``--no-loadscope-reorder``) hands out whole files in collection order, and a long file handed out last keeps one
# worker busy alone. The Slurm tests, longest of all but mostly waiting on their jobs, run on a third worker beside
# the rest from the start (three workers on two cores: the waits are filled). test_decoding.py goes third, so that
# the second worker decodes while the first makes the session's micro pipeline the next files read. Measured with
# --durations; a file not named here keeps its place after these.
LONGEST_FIRST = ("test_slurm.py", "test_artifacts.py", "test_decoding.py", "test_records.py", "test_pipeline.py",
                 "test_readme.py", "test_fidelity.py", "test_real_models.py", "test_lm_eval.py", "test_bad_input.py",
                 "test_learned_policy.py", "test_cli.py", "test_lm_eval_door.py", "test_artifact_integrity.py",
                 "test_train_policy.py", "test_sandbox.py", "test_aggregate.py", "test_task_inputs.py",
                 "test_benchmark.py", "test_transformer_filter.py", "test_benchmarks.py", "test_standins.py",
                 "test_front_door.py", "test_native_llada.py", "test_random_weights.py", "test_native_dream.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def lm_eval_builtin_index_once():
    """lm-eval's index of its own ~14,700 task files, built once per worker: every ``TaskManager`` parses them all
    (about 14 s of CPU), and the suite's lm-eval commands and tasks make a few dozen. The files are the installed
    package's, the same for every command, so each later index starts from the first's entries (lm-eval's task
    factory deep-copies an entry's config before using it, ``lm_eval/tasks/_factory.py``); the tests' own
    task folders (``--include_path``) are indexed afresh every time, and override built-in names as lm-eval's
    merge does (``lm_eval/tasks/_index.py``)."""
    import lm_eval.tasks
    from lm_eval.tasks._index import TaskIndex

    builtin = Path(lm_eval.tasks.__file__).parent
    build = TaskIndex.build
    built: dict[bool, dict] = {}

    def build_once(paths, *, resolve_includes=True):
        paths = [Path(p) for p in paths]
        if not paths or paths[0] != builtin:
            return build(paths, resolve_includes=resolve_includes)
        if resolve_includes not in built:
            built[resolve_includes] = build(paths[:1], resolve_includes=resolve_includes)
        index = dict(built[resolve_includes])
        index.update(build(paths[1:], resolve_includes=resolve_includes))
        return index

    TaskIndex.build = staticmethod(build_once)
    yield
    TaskIndex.build = staticmethod(build)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def micro_model(tokenizer) -> DiffusionLM:
    torch.manual_seed(0)
    config = DiffusionLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128)
    model = DiffusionLM(config).eval()

    def never_predict_the_mask(module, inputs, logits):  # as a trained dLLM never does
        logits[..., tokenizer.mask_token_id] = -1e4
        return logits

    model.lm_head.register_forward_hook(never_predict_the_mask)
    return model


@pytest.fixture(scope="session")
def shipped_model():
    from transformers import AutoModel, AutoTokenizer

    assert SHIPPED.exists(), f"the shipped checkpoint is missing at {SHIPPED}"
    return AutoModel.from_pretrained(SHIPPED).eval(), AutoTokenizer.from_pretrained(SHIPPED)


@pytest.fixture(scope="session")
def micro_pipeline(tmp_path_factory) -> tuple[Path, object]:
    """Every stage of the micro experiment (W&B offline), run once per session: (its output folder, the command's
    result). Read it, or change a copy (tests.test_artifacts.copy_of)."""
    from tests.shared_runs import shared_run

    return shared_run(tmp_path_factory, "micro", ["+experiment=micro", "progress=false"], fresh_interpreter=True)


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT
