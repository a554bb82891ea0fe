"""Any generative lm-evaluation-harness task as a pipeline task (``task=lm_eval task.lm_eval_task=gsm8k``).

Prompts are lm-eval's own contexts (its few-shot examples drawn as lm-eval draws them: the sampler seeded with
``fewshot_seed``, 1234 as lm-eval's default, documents in lm-eval's order, so the first ``n`` prompts are those
of ``lm_eval --limit n``); a generated text is cut at the task's ``until`` strings and scored by lm-eval itself,
through every filter the task defines (GSM8K's ``strict-match`` and ``flexible-extract``, ...) and its metrics,
all kept per sample and averaged. The sweep's accuracy is the task's first metric under its first filter, or
``metric`` (``"exact_match,flexible-extract"``).
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InputError, UserError, first_line
from pipeline.tasks.base import SPLITS, Example, Score, Task, check_split
from pipeline.tasks.hub import json_lines
from pipeline.tasks.lm_eval_files import missing_dataset


def load_with_overrides(manager: Any, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A registered lm-eval task with some of its config replaced (its data read from elsewhere), in the shape of
    ``TaskManager.load``. lm-eval 0.4 merges overrides into a registered task only through its task factory."""
    entry = manager._entry(name)
    if entry is None:
        raise ConfigError("task.lm_eval_task", name, "no such lm-eval task (lm_eval ls tasks lists them)")
    task = manager._factory.build(entry, overrides={"task": name, **overrides}, registry=manager._index)
    return {"tasks": {name: task}}


DATA_FILES_FIX = "make it one JSON object per line, with the fields the task's YAML reads"


def check_json_file(file: Path) -> None:
    """A ``.jsonl`` (or line-delimited ``.json``) file whose every line parses, or one line naming the bad line."""
    if file.suffix not in (".json", ".jsonl"):
        return
    if file.suffix == ".json":
        try:
            json.loads(file.read_text(encoding="utf-8"))
            return  # one JSON document, not lines
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    for _ in json_lines(file, DATA_FILES_FIX):
        pass


class LmEvalTask(Task):
    name = "lm_eval"

    def __init__(self, lm_eval_task: str, num_fewshot: int | None = None, include_path: str | None = None,
                 dataset_path: str | None = None, data_files: dict[str, str] | None = None,
                 fewshot_seed: int = 1234, metric: str | None = None, allow_download: bool = False) -> None:
        self.lm_eval_task, self.num_fewshot, self.include_path = lm_eval_task, num_fewshot, include_path
        self.dataset_path, self.data_files = dataset_path, data_files
        self.fewshot_seed, self.metric, self.allow_download = fewshot_seed, metric, allow_download
        self._task: Any = None
        self._docs: dict[str, dict] = {}  # prompt -> lm-eval document, for scoring

    @property
    def label(self) -> str:
        return f"lm_eval:{self.lm_eval_task}"

    # --- loading -------------------------------------------------------------------------------------------
    def load(self) -> Any:
        if self._task is not None:
            return self._task
        from datasets.exceptions import DatasetGenerationError
        from lm_eval.tasks import TaskManager

        from pipeline.tasks.hub import offline

        manager = None
        try:
            with nullcontext() if self.allow_download else offline():
                manager = TaskManager(include_path=self.include_path)
                loaded = load_with_overrides(manager, self.lm_eval_task, self.overrides()) if self.overrides() \
                    else manager.load(self.lm_eval_task)
        except DatasetGenerationError as error:  # names neither the file nor the line: find them
            files = self.dataset_files(manager)
            for file in files:
                check_json_file(file)
            root = error.__cause__ or error.__context__ or error
            raise ConfigError("task.lm_eval_task", self.lm_eval_task,
                              f"lm-eval could not read its dataset {[str(f) for f in files] or ''} "
                              f"({first_line(root)})") from error
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            user = missing_dataset(error)
            if user is not None:
                raise user from error
            raise ConfigError("task.lm_eval_task", self.lm_eval_task, f"lm-eval could not load it ({error})") \
                from error
        if self.lm_eval_task not in loaded["tasks"]:
            raise ConfigError("task.lm_eval_task", self.lm_eval_task, f"a group of {len(loaded['tasks'])} tasks; "
                                                                      "allowed: one task (sweep each separately)")
        task = loaded["tasks"][self.lm_eval_task]
        if task.OUTPUT_TYPE != "generate_until":
            raise ConfigError("task.lm_eval_task", self.lm_eval_task,
                              f"a {task.OUTPUT_TYPE} task; the pipeline decodes generate_until tasks (score "
                              "likelihood tasks with python -m pipeline.lm_eval)")
        if self.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=self.num_fewshot)
        self._task = task
        return task

    def dataset_files(self, manager: Any) -> list[Path]:
        """The local files the task's dataset is built from: ``task.data_files``, else its YAML's
        ``dataset_kwargs.data_files``."""
        data_files: Any = self.data_files
        if not data_files and manager is not None and manager._entry(self.lm_eval_task) is not None:
            config = manager._factory._load_full_config(manager._entry(self.lm_eval_task), self.overrides())
            data_files = (config.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(data_files, dict):
            data_files = list(data_files.values())
        names = [data_files] if isinstance(data_files, str) else list(data_files or [])
        flat = [name for item in names for name in ([item] if isinstance(item, str) else item)]
        return [Path(name) for name in flat if Path(name).is_file()]

    def overrides(self) -> dict[str, Any]:
        """Where the task's data comes from instead of its hub dataset: a local copy, or JSON-lines files."""
        if self.data_files:
            return {"dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": dict(self.data_files)}}
        return {"dataset_path": self.dataset_path} if self.dataset_path else {}

    @property
    def stop_strings(self) -> tuple[str, ...]:  # type: ignore[override]
        until = (self.load().config.generation_kwargs or {}).get("until") or []
        return (until,) if isinstance(until, str) else tuple(until)

    def documents(self, split: str) -> list[dict]:
        check_split(split)
        task = self.load()
        docs = {"test": task.eval_docs, "validation": task.validation_docs() if task.has_validation_docs() else None,
                "train": task.training_docs() if task.has_training_docs() else None}[split]
        if docs is None:  # the stage's own *.split setting is named at pre-flight where the YAML declares splits
            raise UserError(f"lm-eval's {self.lm_eval_task} has no {split} split; set the stage's split setting "
                            "(sweep.split, trajectories.split, train_policy.split, eval.split) to one it has")
        return list(docs)

    def split_size(self, split: str) -> int:
        return len(self.documents(split))

    def examples(self, split: str, n: int) -> list[Example]:
        self.check_count(split, n)
        task = self.load()
        task.set_fewshot_seed(seed=self.fewshot_seed)  # a fresh sampler: the same contexts every call
        shots = task.config.num_fewshot or 0
        examples = []
        for doc in self.documents(split)[:n]:
            context = task.fewshot_context(doc, shots)
            target = task.doc_to_target(doc)
            target = target[0] if isinstance(target, list) and target else target
            self._docs[context] = doc
            examples.append(Example(prompt=context, answer=str(target), final=str(target)))
        return examples

    # --- scoring -------------------------------------------------------------------------------------------
    def extract_final(self, text: str) -> str | None:
        return text

    def score_many(self, examples: list[Example], generated_texts: list[str]) -> list[Score]:
        from lm_eval.api.instance import Instance

        task = self.load()
        instances = []
        for i, (example, text) in enumerate(zip(examples, generated_texts)):
            doc = self._docs.get(example.prompt)
            if doc is None:
                raise ValueError("an example this task did not make: score the examples it returned")
            instance = Instance(request_type="generate_until", doc=doc, arguments=(example.prompt, {}), idx=0,
                                metadata=(self.lm_eval_task, i, 1))
            instance.resps = [self.cut(text)]
            instances.append(instance)
        for ensemble in task._filters:  # lm-eval's own post-processing, every filter of the task
            ensemble.apply(instances)
        scores = []
        for example, text, instance in zip(examples, generated_texts, instances):
            metrics = {}
            for filter_name, response in instance.filtered_resps.items():
                for metric, value in task.process_results(instance.doc, [response]).items():
                    metrics[f"{metric},{filter_name}"] = float(value)
            primary = self.metric or next(iter(metrics))
            if primary not in metrics:
                raise ConfigError("task.metric", self.metric, f"allowed: {', '.join(metrics)}")
            scores.append(Score(exact_match=metrics[primary] >= 1.0,
                                full_match=self.cut(text).strip() == example.answer.strip(), metrics=metrics))
        return scores

    def check(self) -> None:
        if not self.lm_eval_task:
            raise ConfigError("task.lm_eval_task", self.lm_eval_task, "allowed: an lm-eval task name")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError("task.num_fewshot", self.num_fewshot,
                              "allowed: an integer >= 0, or null (the task's own number of examples)")
        if not 0 <= self.fewshot_seed <= 2**32 - 1:
            raise ConfigError("task.fewshot_seed", self.fewshot_seed, f"allowed: an integer from 0 to {2**32 - 1}")
        for split, name in (self.data_files or {}).items():
            if split not in SPLITS:
                raise ConfigError(f"task.data_files.{split}", name, f"allowed: splits {', '.join(SPLITS)}")
            if not Path(name).is_file():
                raise InputError(name, "no such file", DATA_FILES_FIX)
            check_json_file(Path(name))
        if self.include_path is not None and not os.path.isdir(self.include_path):
            raise InputError(self.include_path, "no such folder of lm-eval task YAML files",
                             "point task.include_path at the folder holding your task's YAML")
