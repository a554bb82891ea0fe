"""Stage ``aggregate``: the speed-quality Pareto frontier of an experiment's sweep results.

Speedups are over vanilla decoding (no EoTP) of the same task and generation length: in NFE (mean forward
passes per sample) and in wall-clock time. A setting is on the frontier when no other setting is at least as
accurate and at least as fast, and strictly better in one of the two. Writes ``frontier.csv``, ``frontier.md``
and ``frontier.png`` and logs the table and plot to W&B. The oracle is shown for reference but is not a
candidate for the frontier, since it needs the reference output in advance.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.artifacts import Artifact, ArtifactSpec, code_digest
from pipeline.plan import expand_grid
from pipeline.stages import sweep
from pipeline.stages.common import StageContext, model_identity, plain
from pipeline.tracking import tracking

log = logging.getLogger(__name__)
CODE = ("pipeline/stages/aggregate.py",)
ORACLES = ("egp",)  # plotted as the ceiling, but never on the frontier: they need the answer in advance
COLUMNS = ("label", "policy", "eotp", "cache", "threshold", "gen_length", "accuracy", "full_match", "nfe_mean",
           "nfe_p50", "nfe_p90", "speedup_nfe", "speedup_wall", "tokens_per_s", "wall_time_s", "frontier_nfe",
           "frontier_wall", "key")


def collect(ctx: StageContext, upstream: bool) -> list[Artifact]:
    """The experiment's planned results (computed if missing, unless reuse_only) plus any others it labelled."""
    found: dict[str, Artifact] = {}
    for setting in expand_grid(ctx.cfg):
        spec = sweep.spec_for(ctx, setting)
        # evaluate() reuses a complete result unless its filter or references changed since it was computed
        reuse_only = upstream and bool(ctx.cfg.reuse_only)
        found[spec.key] = ctx.store.check_upstream(spec, True) if reuse_only else sweep.evaluate(ctx, setting)
    identity, task = model_identity(ctx.cfg.model), plain(ctx.cfg.task)
    for artifact in ctx.store.all("sweep"):
        s = artifact.manifest["settings"]
        if (artifact.manifest["labels"].get("experiment") == ctx.cfg.experiment_name and s["model"] == identity
                and s["task"] == task and s["split"] == ctx.cfg.sweep.split):
            found.setdefault(artifact.key, artifact)
    return list(found.values())


def frontier_rows(results: list[Artifact]) -> list[dict[str, Any]]:
    rows = []
    for artifact in results:
        decode, m = artifact.manifest["settings"]["decode"], artifact.figures
        rows.append({
            "label": m["label"], "policy": decode["policy"], "eotp": bool(decode.get("eotp")),
            "cache": decode.get("cache") or "none",
            "threshold": decode.get("threshold", decode.get("factor")), "gen_length": decode["gen_length"],
            "accuracy": m["accuracy"], "full_match": m["full_match"], "nfe_mean": m["nfe_mean"],
            "nfe_p50": m["nfe_p50"], "nfe_p90": m["nfe_p90"], "tokens_per_s": m["tokens_per_s"],
            "wall_time_s": m["wall_time_s"], "key": artifact.key,
        })
    for gen_length in {r["gen_length"] for r in rows}:
        group = [r for r in rows if r["gen_length"] == gen_length]
        base = next((r for r in group if r["policy"] == "vanilla" and not r["eotp"] and r["cache"] == "none"), None)
        for r in group:
            r["speedup_nfe"] = base["nfe_mean"] / r["nfe_mean"] if base else float("nan")
            r["speedup_wall"] = base["wall_time_s"] / r["wall_time_s"] if base else float("nan")
        deployable = [r for r in group if r["policy"] not in ORACLES]
        for axis in ("nfe", "wall"):
            for r in group:
                r[f"frontier_{axis}"] = r["policy"] not in ORACLES and not any(
                    dominates(o, r, f"speedup_{axis}") for o in deployable if o is not r)
    return sorted(rows, key=lambda r: (r["gen_length"], r["speedup_nfe"]))


def dominates(a: dict[str, Any], b: dict[str, Any], speed: str) -> bool:
    at_least = a["accuracy"] >= b["accuracy"] and a[speed] >= b[speed]
    return at_least and (a["accuracy"] > b["accuracy"] or a[speed] > b[speed])


def headline(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per gen length: the fastest filter+EoTP setting within ``tolerance`` of vanilla accuracy, and whether the
    filter's frontier dominates the threshold policy's (each threshold setting matched by a filter setting with
    no more NFE and no less accuracy)."""
    figures: dict[str, Any] = {}
    for gen_length in sorted({r["gen_length"] for r in rows}):
        group = [r for r in rows if r["gen_length"] == gen_length]
        base = next((r for r in group if r["policy"] == "vanilla" and not r["eotp"] and r["cache"] == "none"), None)
        filters = [r for r in group if r["policy"] == "filter"]
        thresholds = [r for r in group if r["policy"] == "threshold"]
        if base and filters:
            close = [r for r in filters if r["eotp"] and r["accuracy"] >= base["accuracy"] - tolerance]
            best = max(close, key=lambda r: r["speedup_nfe"], default=None)
            if best:
                figures[f"L{gen_length}/best_filter"] = best["label"]
                figures[f"L{gen_length}/best_filter_speedup_nfe"] = best["speedup_nfe"]
                figures[f"L{gen_length}/best_filter_accuracy"] = best["accuracy"]
            figures[f"L{gen_length}/vanilla_accuracy"] = base["accuracy"]
        if thresholds and filters:
            matched = [any(f["nfe_mean"] <= t["nfe_mean"] and f["accuracy"] >= t["accuracy"] for f in filters)
                       for t in thresholds]
            figures[f"L{gen_length}/threshold_settings_dominated"] = f"{sum(matched)}/{len(matched)}"
    return figures


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | accuracy | full match | NFE mean | NFE p50/p90 | speedup (NFE) | speedup (wall) | "
             "tokens/s | frontier |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "**yes**" if r["frontier_nfe"] else ""
        lines.append(
            f"| {r['label']} | {100 * r['accuracy']:.1f} | {100 * r['full_match']:.1f} | {r['nfe_mean']:.1f} | "
            f"{r['nfe_p50']:g}/{r['nfe_p90']:g} | {r['speedup_nfe']:.2f}x | {r['speedup_wall']:.2f}x | "
            f"{r['tokens_per_s']:.0f} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["gen_length"] for r in rows})
    fig, axes = plt.subplots(len(lengths), 2, figsize=(11, 4.2 * len(lengths)), squeeze=False)
    for row_axes, gen_length in zip(axes, lengths):
        group = [r for r in rows if r["gen_length"] == gen_length]
        for ax, axis, title in zip(row_axes, ("nfe", "wall"), ("NFE", "wall-clock")):
            families = sorted({(r["policy"], r["eotp"], r["cache"]) for r in group})
            for policy, eotp, cache in families:
                pts = sorted((r for r in group if (r["policy"], r["eotp"], r["cache"]) == (policy, eotp, cache)),
                             key=lambda r: r[f"speedup_{axis}"])
                name = policy + (" + EoTP" if eotp else "") + ("" if cache == "none" else f" + {cache} cache")
                ax.plot([p[f"speedup_{axis}"] for p in pts], [100 * p["accuracy"] for p in pts], marker="o",
                        linestyle="-" if eotp else "--", label=name)
            front = sorted((r for r in group if r[f"frontier_{axis}"]), key=lambda r: r[f"speedup_{axis}"])
            ax.plot([p[f"speedup_{axis}"] for p in front], [100 * p["accuracy"] for p in front], color="black",
                    linewidth=1, drawstyle="steps-post", zorder=0)
            ax.scatter([p[f"speedup_{axis}"] for p in front], [100 * p["accuracy"] for p in front], s=140,
                       facecolors="none", edgecolors="black", label="Pareto frontier", zorder=3)
            ax.set_xscale("log")
            ax.set_xlabel(f"speedup over vanilla ({title})")
            ax.set_ylabel("exact-match accuracy (%)")
            ax.set_title(f"gen length {gen_length}: accuracy vs {title} speedup")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: DictConfig, ctx: StageContext | None = None) -> Artifact:
    ctx = ctx or StageContext(cfg)
    results = collect(ctx, upstream=True)
    if not results:
        raise RuntimeError(f"no sweep results for experiment {cfg.experiment_name!r}; run stage=sweep first")
    spec = ArtifactSpec("aggregate", code_digest(CODE), {"results": sorted(r.key for r in results),
                                                         "tolerance": cfg.aggregate.tolerance}, labels=ctx.labels())

    rows = frontier_rows(results)

    def compute(work: Path) -> dict[str, Any]:
        write_csv(rows, work / "frontier.csv")
        (work / "frontier.md").write_text(markdown(rows))
        plot(rows, work / "frontier.png")
        return {"settings": len(rows), **headline(rows, cfg.aggregate.tolerance)}

    artifact = ctx.store.materialize(spec, compute, force=ctx.forced("aggregate"),
                                     inputs={r.key: r for r in results})
    with tracking(cfg, "aggregate", artifact.key) as tracker:
        tracker.log_table("frontier/table", [{c: r[c] for c in COLUMNS} for r in rows])
        tracker.log_image("frontier/plot", artifact.path / "frontier.png")
        tracker.log_scatter("frontier/scatter", rows, "speedup_nfe", "accuracy", "accuracy vs NFE speedup")
        tracker.summary(artifact.figures)
    print((artifact.path / "frontier.md").read_text())
    print(f"frontier table: {artifact.path / 'frontier.md'}\nfrontier csv:   {artifact.path / 'frontier.csv'}\n"
          f"frontier plot:  {artifact.path / 'frontier.png'}")
    for name, value in artifact.figures.items():
        print(f"{name}: {value}")
    return artifact
