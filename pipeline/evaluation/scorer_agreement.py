"""``python -m pipeline.evaluation.scorer_agreement``: the project's hand-written GSM8K scorer against lm-eval's
``gsm8k`` task on one shared set of outputs, per class of output, so any difference between the two is named.

The outputs are generated around GSM8K-format documents (a question, a worked answer ending ``#### N``) in the
forms models write: the reference itself, a plain "The answer is N.", commas, a dollar sign, decimal zeros, a
wrong number, the next few-shot question after the answer, a number after the answer, and so on. Both scorers read
the same documents (lm-eval's task reads them through its own dataset loader from a JSON-lines copy) and the
same texts, each through its own stop strings, filters and normalisation. Nothing is downloaded: the documents
are synthetic, so the comparison is of the scorers, not of the dataset.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pipeline.tasks.base import Example
from pipeline.tasks.gsm8k import GSM8K
from pipeline.tasks.lm_eval_task import LmEvalTask

NAMES = ("Tom", "Ana", "Li", "Sam", "Priya", "Omar")
ITEMS = ("apples", "books", "coins", "tickets", "marbles")


def documents(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """GSM8K-format documents with integer answers of every size (thousands and negatives included)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b = rng.randint(2, 3000), rng.randint(2, 900)
        sign = -1 if rng.random() < 0.1 else 1
        total = a + sign * b
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        verb = "gets" if sign > 0 else "gives away"
        question = f"{name} has {a} {item} and {verb} {b}. How many {item} does {name} have now?"
        answer = f"{name} has {a} {'+' if sign > 0 else '-'} {b} = <<{a}{'+' if sign > 0 else '-'}{b}={total}>>" \
                 f"{total} {item}.\n#### {total}"
        docs.append({"question": question, "answer": answer, "final": total})
    return docs


def outputs(doc: dict[str, Any]) -> dict[str, str]:
    """The forms a model's answer takes, by class."""
    n = doc["final"]
    work = doc["answer"].split("####")[0]
    return {
        "reference": doc["answer"],
        "reference, next question after": f"{doc['answer']}\n\nQuestion: How many are left?\nAnswer: 3",
        "answer is N.": f"{work}The answer is {n}.",
        "#### with thousands commas": f"{work}#### {n:,}",
        "#### with a dollar sign": f"{work}#### ${n}",
        "#### with decimal zeros": f"{work}#### {n}.00",
        "#### followed by a period": f"{work}#### {n}.",
        "####N without a space": f"{work}####{n}",
        "#### then another number": f"{work}#### {n}\nThat is 2 more than before.",
        "wrong number after ####": f"{work}#### {n + 1}",
        "no number at all": "I am not sure how to solve this.",
        "**N** in bold": f"{work}So the answer is **{n}**.",
    }


def lm_eval_gsm8k(docs: list[dict[str, Any]], folder: Path) -> LmEvalTask:
    """lm-eval's registered ``gsm8k`` task, its data replaced by these documents."""
    rows = "".join(json.dumps({"question": d["question"], "answer": d["answer"]}) + "\n" for d in docs)
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(rows)
    files = {split: str(folder / f"{split}.jsonl") for split in ("train", "test")}
    return LmEvalTask("gsm8k", data_files=files)


def agreement(n: int = 50, seed: int = 0) -> dict[str, Any]:
    """Per output class: how often each scorer accepts, and how often the project's agrees with lm-eval's."""
    docs = documents(n, seed)
    ours = GSM8K()
    with tempfile.TemporaryDirectory() as folder:
        theirs = lm_eval_gsm8k(docs, Path(folder))
        examples = theirs.examples("test", n)
        by_class: dict[str, list[dict[str, bool]]] = defaultdict(list)
        for doc, example in zip(docs, examples):
            mine = Example(prompt=example.prompt, answer=doc["answer"], final=str(doc["final"]))
            texts = outputs(doc)
            scores = theirs.score_many([example] * len(texts), list(texts.values()))
            for (kind, text), score in zip(texts.items(), scores):
                both = ours.score_both(mine, text)
                by_class[kind].append({
                    "ours": ours.score(mine, text).exact_match, "ours_strict": both["strict_match"],
                    "ours_flexible": both["flexible_match"],
                    "lm_eval_strict": score.metrics["exact_match,strict-match"] == 1.0,
                    "lm_eval_flexible": score.metrics["exact_match,flexible-extract"] == 1.0})
    rows = []
    for kind, results in by_class.items():
        count = Counter()
        for r in results:
            count.update({k: int(v) for k, v in r.items()})
            count["strict agree"] += r["ours_strict"] == r["lm_eval_strict"]
            count["flexible agree"] += r["ours_flexible"] == r["lm_eval_flexible"]
        rows.append({"class": kind, "outputs": len(results), **{k: count[k] / len(results) for k in (
            "ours", "ours_strict", "lm_eval_strict", "ours_flexible", "lm_eval_flexible", "strict agree",
            "flexible agree")}})
    total = sum(r["outputs"] for r in rows)
    overall = {k: sum(r[k] * r["outputs"] for r in rows) / total for k in ("strict agree", "flexible agree")}
    return {"documents": n, "outputs": total, "overall": overall, "classes": rows}


def table(result: dict[str, Any]) -> str:
    lines = ["| output class | ours (strict, else last number) | ours strict | lm-eval strict-match | ours flexible | "
             "lm-eval flexible-extract | strict agree | flexible agree |", "|---|---|---|---|---|---|---|---|"]
    for r in result["classes"]:
        lines.append(f"| {r['class']} | " + " | ".join(f"{100 * r[k]:.0f}%" for k in (
            "ours", "ours_strict", "lm_eval_strict", "ours_flexible", "lm_eval_flexible", "strict agree",
            "flexible agree")) + " |")
    o = result["overall"]
    lines.append(f"\n{result['outputs']} outputs of {result['documents']} documents: strict scorers agree on "
                 f"{100 * o['strict agree']:.1f}%, flexible on {100 * o['flexible agree']:.1f}%.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(table(agreement(args.documents, args.seed)))


if __name__ == "__main__":
    main()
