"""``stage=benchmark`` through the command line: batch-1 latency, throughput and overhead of every grid setting."""

from __future__ import annotations

import json

from tests.test_cli import MICRO, run_cli

GRID = "sweep.grid=[{policy: egp}, {policy: threshold, threshold: 0.9, eotp: true, cache: [none, dual]}]"


def test_the_benchmark_times_every_setting_against_vanilla_and_is_reused(tmp_path):
    args = (MICRO, "stage=benchmark", GRID, "benchmark.num_prompts=6", "benchmark.warmup=1", "benchmark.batch_size=3",
            f"output_dir={tmp_path}", "logger=none", "progress=false")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "artifacts" / "benchmark").glob("*/benchmark.json")
    rows = {row["label"]: row for row in json.loads(folder.read_text())}
    # vanilla without a cache is added as the reference of the ratios
    assert list(rows) == ["vanilla L=32", "egp L=32", "threshold t=0.9 eotp L=32",
                          "threshold t=0.9 eotp dual-cache L=32"]
    vanilla = rows["vanilla L=32"]
    assert vanilla["latency_speedup"] == vanilla["tokens_per_s_ratio_batch1"] == 1.0
    assert rows["egp L=32"]["accuracy"] == vanilla["accuracy"], "the oracle replays vanilla's outputs"
    assert rows["egp L=32"]["nfe_mean"] < vanilla["nfe_mean"]
    for row in rows.values():
        assert 0 < row["latency_p50_s"] <= row["latency_p90_s"]
        assert 0 <= row["overhead_batch1"] < 1 and row["tokens_per_s_batch3"] > 0
        assert row["same_outputs_batched"], "left padding does not change the embedded model's outputs"
    assert rows["threshold t=0.9 eotp dual-cache L=32"]["cache"] == "dual"
    for label in rows:
        assert f"| {label} |" in result.stdout

    again = run_cli(*args)
    assert again.returncode == 0 and "complete, reusing" in again.stderr


def test_the_reference_restatement_of_llada_is_timed_beside_vanilla_and_decodes_the_same(tmp_path):
    result = run_cli(MICRO, "stage=benchmark", "sweep.grid=[{policy: vanilla}]", "benchmark.num_prompts=3",
                     "benchmark.warmup=1", "benchmark.reference=true", f"output_dir={tmp_path}", "logger=none",
                     "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "artifacts" / "benchmark").glob("*/benchmark.json")
    vanilla, reference = json.loads(folder.read_text())
    assert reference["policy"] == "reference" and reference["same_outputs_as_vanilla"]
    assert reference["accuracy"] == vanilla["accuracy"] and reference["nfe_mean"] == vanilla["nfe_mean"] == 32
    assert reference["overhead_batch1"] is None and "| LLaDA generate (re-stated, one prompt at a time) L=32 |" in \
        result.stdout
