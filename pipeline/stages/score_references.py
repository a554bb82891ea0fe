"""Stage ``score_references``: a task's reference answers scored as if a model had generated them.

They go through the same stop strings, answer extraction, scorer and (for code) sandbox as generated text, so a
pass rate below 100% means the scoring, not a model, is wrong: the check to run before trusting a number (all 164
canonical HumanEval solutions must pass). Prints the pass rate to stdout and each failure to the log.
"""

from __future__ import annotations

import logging

from pipeline.stages.context import StageContext
from pipeline.tasks.registry import build_task

log = logging.getLogger(__name__)


def run(ctx: StageContext, items: list[int] | None = None) -> dict[str, int]:
    cfg = ctx.cfg
    task = build_task(cfg.task)
    split = cfg.references.split
    count = cfg.references.num_prompts or task.split_size(split)
    examples = task.examples(split, count)
    scores = task.score_many(examples, [example.answer for example in examples])
    failures = [(example, score) for example, score in zip(examples, scores) if not score.exact_match]
    for example, _ in failures[:20]:
        log.warning("reference answer scored wrong: final %r, answer %r", example.final, example.answer[-200:])
    passed = len(examples) - len(failures)
    print(f"{task.name} {split}: {passed}/{len(examples)} reference answers pass ({100 * passed / len(examples):.1f}%)")
    return {"passed": passed, "total": len(examples)}
