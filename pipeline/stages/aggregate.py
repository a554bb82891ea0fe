"""Stage ``aggregate``: the speed-quality Pareto frontier of an experiment's sweep results.

Speedups are over vanilla decoding (no EoTP) of the same task and generation length: in NFE (mean forward
passes per sample) and in wall-clock time. A setting is on the frontier when no other setting is at least as
accurate and at least as fast, and strictly better in one of the two. Writes ``frontier.csv``, ``frontier.md``
and ``frontier.png`` and logs the table and plot to W&B. The oracle is shown for reference but is not a
candidate for the frontier, since it needs the reference output in advance.

The headline figures make the paper's claim checkable: how many hand-tuned rule settings (``BASELINES``) some
learned setting (the supervised filter or the policy fine-tuned from it, ``rl_filter``) matches or beats on both
axes (like with like: the same EoTP and KV cache), which ones it does not, and how close the fastest learned
setting that keeps vanilla's accuracy comes to the oracle.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.artifacts.store import Artifact, ArtifactSpec, ArtifactStore, code_digest
from pipeline.configuration.command import is_multirun, sweep_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.runtime.tracking import tracking
from pipeline.stages import sweep
from pipeline.stages.context import StageContext, model_identity, plain

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.text import Annotation

log = logging.getLogger(__name__)
CODE = ("pipeline/stages/aggregate.py",)
Point = tuple[float, float]  # in display pixels
ORACLES = ("egp",)  # plotted as the ceiling, but never on the frontier: they need the answer in advance
# the hand-tuned and training-free rules a learned policy must beat
BASELINES = ("threshold", "factor", "entropy_bounded", "klass", "local_leap", "credit", "prophet")
LEARNED = ("filter", "rl_filter")  # the supervised filter and the policy fine-tuned from it by reinforcement
COLUMNS = ("label", "policy", "parameter", "eotp", "cache", "threshold", "gen_length", "accuracy", "full_match",
           "nfe_mean", "nfe_p50", "nfe_p90", "speedup_nfe", "speedup_wall", "tokens_per_s", "wall_time_s",
           "frontier_nfe", "frontier_wall", "key")
# policy -> (colour, marker): the learned filter in a strong colour, the rules muted
STYLES: dict[str, tuple[str, str]] = {
    "filter": ("#d62728", "P"),
    "rl_filter": ("#ff7f0e", "h"),
    "local_leap": ("#6bb0b0", "<"),
    "credit": ("#c08fa0", ">"),
    "prophet": ("#a0a060", "d"),
    "threshold": ("#5f87ad", "o"),
    "factor": ("#7a9e7a", "^"),
    "entropy_bounded": ("#b0916b", "v"),
    "klass": ("#9884b5", "D"),
    "vanilla": ("#8c8c8c", "s"),
    "egp": ("#3a3a3a", "*"),
}
OTHER_STYLE = ("#b0b0b0", "X")
MARKER_ROOM = 6  # points around a marker (a frontier circle's radius) that no annotation covers
LEADER_FROM = 9  # annotations whose edge ends this many points or more from their marker get a line to it
# adjustText's iterations: a fixed number rather than its default time limit, so that every run draws the same plot
ADJUST_STEPS = 150


def collect(ctx: StageContext) -> list[Artifact]:
    """The results of the plan's sweep nodes (this command's settings) plus any others the experiment labelled."""
    found: dict[str, Artifact] = {}
    for setting in sweep_settings(ctx.cfg, is_multirun()):
        artifact = ctx.upstream(sweep.spec_for(ctx, setting))
        found[artifact.key] = artifact
    for artifact in labelled(ctx):
        found.setdefault(artifact.key, artifact)
    return list(found.values())


def labelled(ctx: StageContext, store: ArtifactStore | None = None) -> list[Artifact]:
    """Complete sweep results of this experiment's model, task and split, planned or not (e.g. multirun jobs),
    listed from ``store`` (default: the run's, which stops at a damaged one; a read-only one passes over it)."""
    split = ctx.cfg.sweep.split
    return (store or ctx.store).all("sweep", where=lambda a: ours(ctx, a) and a.manifest["settings"]["split"] == split)


def ours(ctx: StageContext, artifact: Artifact) -> bool:
    """Whether an artifact was labelled with this experiment and made with its model and task."""
    settings = artifact.manifest["settings"]
    return (artifact.manifest["labels"].get("experiment") == ctx.cfg.experiment_name
            and settings["model"] == model_identity(ctx.cfg.model) and settings["task"] == plain(ctx.cfg.task))


def spec(ctx: StageContext, result_keys: list[str], timed: Artifact | None = None) -> ArtifactSpec:
    """The frontier of these sweep results (and of the experiment's latest benchmark, for the wall-clock axis)."""
    timed = timed or latest_benchmark(ctx)
    return ArtifactSpec("aggregate", code_digest(CODE), {"results": sorted(set(result_keys)),
                                                         "tolerance": ctx.cfg.aggregate.tolerance},
                        {"benchmark": timed.key} if timed else {}, labels=ctx.labels())


def latest_benchmark(ctx: StageContext) -> Artifact | None:
    """The experiment's most recent ``stage=benchmark`` result for this model and task, if any."""
    found = ctx.store.all("benchmark", where=lambda a: ours(ctx, a))
    return max(found, key=lambda a: (a.path / "benchmark.json").stat().st_mtime, default=None)


def identity_key(decode: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in decode.items() if k != "filter_path"}, sort_keys=True)


def batch1_speedups(timed: Artifact | None) -> dict[str, float]:
    """Decode identity -> batch-1 latency speedup over vanilla without a cache, from a benchmark artifact."""
    if timed is None:
        return {}
    rows = json.loads((timed.path / "benchmark.json").read_text())
    return {identity_key(DecodeSettings(**row["setting"]).identity()): row["latency_speedup"] for row in rows
            if "setting" in row}  # the re-stated LLaDA reference row is not a setting of the grid


def number(value: Any) -> str:
    """A setting's value as written in labels (``0.9``, ``1.0``), whether the manifest stored it as int or float."""
    return str(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def parameter(decode: dict[str, Any]) -> str:
    """The knob a policy was run at, in words (``tau=0.9``, ``f=1.0``, ``gamma=0.1``, ``tau=0.9, kl<=0.01``);
    empty for policies without one. A filter threshold of None is the one validated with the filter."""
    policy = decode["policy"]
    if policy == "rl_filter" and "speed" in decode:  # the speed-conditioned policy's knob (older ones have none)
        speed = "speed=validated" if decode["speed"] is None else f"speed={number(decode['speed'])}"
        return speed if decode.get("threshold") is None else f"{speed}, tau={number(decode['threshold'])}"
    if policy in ("threshold", "filter", "rl_filter", "credit"):
        value = decode.get("threshold")
        return "tau=validated" if value is None else f"tau={number(value)}"
    if policy == "local_leap":
        return (f"tau={number(decode.get('threshold'))}, relaxed={number(decode.get('relaxed_threshold'))}, "
                f"r={decode.get('radius')}")
    if policy == "factor":
        return f"f={number(decode.get('factor'))}" + (" ref" if decode.get("factor_rule") == "reference" else "")
    if policy == "entropy_bounded":
        return f"gamma={number(decode.get('gamma'))}"
    if policy == "klass":
        return f"tau={number(decode.get('threshold'))}, kl<={number(decode.get('kl_bound'))}"
    return ""


def setting_name(row: dict[str, Any]) -> str:
    """The row's label, with its parameter added where the label does not show it (sweep labels name the
    threshold and factor but not every policy's knob), so that every name in a headline is one setting."""
    shown = re.sub(r" L=\d+$", "", row["label"])
    values = re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", row["parameter"])
    return row["label"] if all(v in shown for v in values) else f"{row['label']} ({row['parameter']})"


def frontier_rows(results: list[Artifact], latency: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per result. The wall-clock speedup is the benchmark's batch-1 latency ratio where a benchmark
    timed every setting of a gen length (``wall_source``), else the sweep's batched wall time."""
    latency = latency or {}
    rows = []
    for artifact in results:
        decode, m = artifact.manifest["settings"]["decode"], artifact.figures
        rows.append({
            "label": m["label"], "policy": decode["policy"], "parameter": parameter(decode),
            "eotp": bool(decode.get("eotp")), "eotp_rule": decode.get("eotp_rule", "committed"),
            "cache": decode.get("cache") or "none",
            "threshold": decode.get("threshold", decode.get("factor")), "gen_length": decode["gen_length"],
            "accuracy": m["accuracy"], "full_match": m["full_match"], "nfe_mean": m["nfe_mean"],
            "nfe_p50": m["nfe_p50"], "nfe_p90": m["nfe_p90"], "tokens_per_s": m["tokens_per_s"],
            "wall_time_s": m["wall_time_s"], "key": artifact.key, "identity": identity_key(decode),
        })
    for gen_length in {r["gen_length"] for r in rows}:
        group = [r for r in rows if r["gen_length"] == gen_length]
        base = vanilla(group)
        timed = all(r["identity"] in latency for r in group)
        for r in group:
            r["speedup_nfe"] = base["nfe_mean"] / r["nfe_mean"] if base else float("nan")
            if timed:
                r["speedup_wall"], r["wall_source"] = latency[r["identity"]], "batch-1 latency (stage=benchmark)"
            else:
                r["speedup_wall"] = base["wall_time_s"] / r["wall_time_s"] if base else float("nan")
                r["wall_source"] = "batched wall time (sweep)"
        deployable = [r for r in group if r["policy"] not in ORACLES]
        for axis in ("nfe", "wall"):
            for r in group:
                r[f"frontier_{axis}"] = r["policy"] not in ORACLES and not any(
                    dominates(o, r, f"speedup_{axis}") for o in deployable if o is not r)
    return sorted(rows, key=lambda r: (r["gen_length"], r["speedup_nfe"]))


def vanilla(group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference every speedup and the accuracy tolerance are measured against: no EoTP, no cache."""
    return next((r for r in group if r["policy"] == "vanilla" and not r["eotp"] and r["cache"] == "none"), None)


def dominates(a: dict[str, Any], b: dict[str, Any], speed: str) -> bool:
    at_least = a["accuracy"] >= b["accuracy"] and a[speed] >= b[speed]
    return at_least and (a["accuracy"] > b["accuracy"] or a[speed] > b[speed])


def matches(candidate: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Whether a filter setting is at least as good as a rule setting on both axes, like with like: the same KV
    cache (caches change outputs) and the same EoTP choice (EoTP alone saves forward passes on any policy)."""
    return (candidate["cache"] == rule["cache"] and candidate["eotp"] == rule["eotp"]
            and candidate["nfe_mean"] <= rule["nfe_mean"] and candidate["accuracy"] >= rule["accuracy"])


def rule_matches(group: list[dict[str, Any]], learned: tuple[str, ...] = LEARNED
                 ) -> dict[str, list[tuple[dict[str, Any], bool]]]:
    """Per baseline family present in one gen length's rows: each rule setting and whether some setting of a
    ``learned`` policy matches or beats it. Empty without such settings (there is no claim to check)."""
    filters = [r for r in group if r["policy"] in learned]
    if not filters:
        return {}
    found = {}
    for family in BASELINES:
        rules = [r for r in group if r["policy"] == family]
        if rules:
            found[family] = [(r, any(matches(f, r) for f in filters)) for r in rules]
    return found


def oracle_for(group: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any] | None:
    """The oracle + EoTP row to compare a filter setting with: the same cache and EoTP rule where there is one."""
    oracles = [r for r in group if r["policy"] in ORACLES and r["eotp"]]
    return min(oracles, default=None,
               key=lambda r: (r["cache"] != best["cache"], r["eotp_rule"] != best["eotp_rule"], r["nfe_mean"]))


def headline(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per gen length: the fastest filter+EoTP setting within ``tolerance`` of vanilla accuracy and its NFE
    against the oracle's, and how many settings of each hand-tuned rule a filter setting matches or beats (no more
    NFE, no less accuracy, same EoTP and KV cache), with the names of those it does not."""
    figures: dict[str, Any] = {}
    for gen_length in sorted({r["gen_length"] for r in rows}):
        group = [r for r in rows if r["gen_length"] == gen_length]
        base = vanilla(group)
        filters = [r for r in group if r["policy"] in LEARNED]
        prefix = f"L{gen_length}/"
        if base and filters:
            # the small slack keeps "within tolerance" true at exactly the tolerance despite float rounding
            close = [r for r in filters if r["eotp"] and r["accuracy"] >= base["accuracy"] - tolerance - 1e-12]
            best = max(close, key=lambda r: r["speedup_nfe"], default=None)
            if best:
                figures[prefix + "best_filter"] = best["label"]
                figures[prefix + "best_filter_speedup_nfe"] = best["speedup_nfe"]
                figures[prefix + "best_filter_accuracy"] = best["accuracy"]
                figures[prefix + "best_filter_nfe_mean"] = best["nfe_mean"]
                oracle = oracle_for(group, best)
                if oracle:
                    figures[prefix + "oracle"] = oracle["label"]
                    figures[prefix + "best_filter_nfe_over_oracle"] = best["nfe_mean"] / oracle["nfe_mean"]
            figures[prefix + "vanilla_accuracy"] = base["accuracy"]
        found = rule_matches(group)
        if found:
            for family, checked in found.items():
                figures[prefix + f"{family}_settings_matched"] = f"{sum(m for _, m in checked)}/{len(checked)}"
            checked = [pair for pairs in found.values() for pair in pairs]
            figures[prefix + "baseline_settings_matched"] = f"{sum(m for _, m in checked)}/{len(checked)}"
            unmatched = [setting_name(r) for r, m in checked if not m]
            if unmatched:
                figures[prefix + "unmatched"] = ", ".join(unmatched)
            present = [p for p in LEARNED if any(r["policy"] == p for r in group)]
            for policy in present if len(present) > 1 else ():  # what each learned policy matches on its own
                alone = [pair for pairs in rule_matches(group, (policy,)).values() for pair in pairs]
                figures[prefix + f"{policy}_alone_matched"] = f"{sum(m for _, m in alone)}/{len(alone)}"
    return figures


def gen_lengths(figures: dict[str, Any]) -> list[int]:
    return sorted({int(m.group(1)) for k in figures if (m := re.match(r"L(\d+)/", k))})


def fraction(value: str) -> tuple[int, int]:
    matched, total = value.split("/")
    return int(matched), int(total)


def summary_sentences(figures: dict[str, Any], tolerance: float) -> list[str]:
    """The headline figures in plain words, one sentence per claim and gen length (for ``frontier.md``)."""
    sentences = []
    for gen_length in gen_lengths(figures):
        f = {k.split("/", 1)[1]: v for k, v in figures.items() if k.startswith(f"L{gen_length}/")}
        if "baseline_settings_matched" in f:
            matched, total = fraction(f["baseline_settings_matched"])
            families = [b for b in BASELINES if f"{b}_settings_matched" in f]
            count = f"all {total}" if matched == total and total > 1 else f"{matched} of {total}"
            split = ""
            if len(families) > 1:
                split = " (" + ", ".join(
                    "{} {} of {}".format(b, *fraction(f[f"{b}_settings_matched"])) for b in families) + ")"
            sentence = (f"Learned filter vs hand-tuned rules at gen length {gen_length}: {count} rule settings{split} "
                        "are matched or beaten (no more forward passes, no lower accuracy, same EoTP and KV cache) "
                        "by a filter setting")
            sentences.append(sentence + (f"; not matched: {f['unmatched']}." if "unmatched" in f else "."))
            alone = [p for p in LEARNED if f"{p}_alone_matched" in f]
            if alone:
                sentences.append("Each learned policy alone: " + ", ".join(
                    "{} {} of {}".format(p, *fraction(f[f"{p}_alone_matched"])) for p in alone) + ".")
        if "vanilla_accuracy" in f:
            near = f"within {100 * tolerance:g} points of vanilla ({100 * f['vanilla_accuracy']:.1f}%)"
            if "best_filter" in f:
                oracle = (f", {f['best_filter_nfe_over_oracle']:.2f}x the oracle's"
                          if "best_filter_nfe_over_oracle" in f else "")
                sentences.append(
                    f"Best filter + EoTP {near} at gen length {gen_length}: {f['best_filter']}, "
                    f"{100 * f['best_filter_accuracy']:.1f}% at {f['best_filter_nfe_mean']:.1f} forward passes "
                    f"({f['best_filter_speedup_nfe']:.1f}x fewer than vanilla{oracle}).")
            else:
                sentences.append(f"No filter + EoTP setting at gen length {gen_length} is {near}.")
    return sentences


def plot_title(figures: dict[str, Any]) -> str:
    """The plot's headline: one line per gen length, from the same figures as the sentences."""
    lines = []
    for gen_length in gen_lengths(figures):
        f = {k.split("/", 1)[1]: v for k, v in figures.items() if k.startswith(f"L{gen_length}/")}
        parts = []
        if "baseline_settings_matched" in f:
            parts.append("learned filter matches or beats {} of {} hand-tuned rule settings".format(
                *fraction(f["baseline_settings_matched"])))
        if "best_filter" in f:
            parts.append(f"best filter + EoTP near vanilla: {f['best_filter_speedup_nfe']:.1f}x fewer forward "
                         f"passes at {100 * f['best_filter_accuracy']:.1f}%")
        elif "vanilla_accuracy" in f:
            parts.append("no filter + EoTP setting near vanilla accuracy")
        if parts:
            lines.append(f"gen length {gen_length}: " + "; ".join(parts))
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)


def markdown(rows: list[dict[str, Any]], sentences: list[str] | None = None) -> str:
    lines = ["| setting | accuracy | full match | NFE mean | NFE p50/p90 | speedup (NFE) | speedup (wall) | "
             "tokens/s | frontier |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "**yes**" if r["frontier_nfe"] else ""
        lines.append(
            f"| {setting_name(r)} | {100 * r['accuracy']:.1f} | {100 * r['full_match']:.1f} | {r['nfe_mean']:.1f} | "
            f"{r['nfe_p50']:g}/{r['nfe_p90']:g} | {r['speedup_nfe']:.2f}x | {r['speedup_wall']:.2f}x | "
            f"{r['tokens_per_s']:.0f} | {mark} |"
        )
    sources = {f"gen length {r['gen_length']}: {r['wall_source']}" for r in rows}
    lines += ["", f"Wall-clock speedups from {'; '.join(sorted(sources))}."]
    if sentences:
        lines += ["", "## Headline", "", *(f"- {s}" for s in sentences)]
    return "\n".join(lines) + "\n"


def combine(parameters: list[str]) -> str:
    """One annotation for settings drawn at one point: ``tau=0.5/0.7/0.9`` when they share a knob's name."""
    unique = list(dict.fromkeys(p for p in parameters if p))
    if len(unique) < 2:
        return unique[0] if unique else ""

    def order(p: str) -> tuple[int, float, str]:
        value = p.split("=", 1)[-1]
        try:
            return 0, float(value), p
        except ValueError:
            return 1, 0.0, p

    names = {p.split("=", 1)[0] for p in unique}
    if len(names) == 1 and all("=" in p and ", " not in p for p in unique):
        return f"{names.pop()}=" + "/".join(p.split("=", 1)[1] for p in sorted(unique, key=order))
    return " / ".join(sorted(unique, key=order))


def series_name(policy: str, eotp: bool, cache: str) -> str:
    """``threshold + EoTP + dual cache``: a line's name in the legend, and the annotation of a point without a knob."""
    return policy + (" + EoTP" if eotp else "") + ("" if cache == "none" else f" + {cache} cache")


def point_labels(points: list[dict[str, Any]], speed: str) -> list[tuple[float, float, list[str]]]:
    """The points of one series as drawn: those equal to 3 significant digits (speedup and accuracy) once, with
    the settings they stand for (parameters, or series' names where there are none, as for vanilla and the oracle),
    in the order given: :func:`combine` makes them one annotation."""
    drawn: dict[tuple[str, str], tuple[float, float, list[str]]] = {}
    for p in points:
        x, y = p[speed], 100 * p["accuracy"]
        name = p["parameter"] or series_name(p["policy"], p["eotp"], p["cache"])
        drawn.setdefault((f"{x:.3g}", f"{y:.3g}"), (x, y, []))[2].append(name)
    return list(drawn.values())


@dataclass
class Note:
    """A point's annotation on the plot, before it is placed: the family it belongs to and the settings it names."""

    annotation: Annotation
    policy: str
    names: list[str]


def merge_neighbours(ax: Axes, notes: list[Note], room: float) -> list[tuple[Note, list[Point]]]:
    """One annotation for a run of points of one family each less than ``room`` display pixels from another
    (markers that overlap read as one point): the first one's, naming all their settings, with the display points
    it stands for; the others are removed."""
    kept: list[tuple[Note, list[Point]]] = []
    for note in notes:
        here = tuple(ax.transData.transform(note.annotation.xy))
        same = next(((k, points) for k, points in kept
                     if k.policy == note.policy and any(math.dist(p, here) < room for p in points)), None)
        if same is None:
            kept.append((note, [here]))
            continue
        same[1].append(here)
        same[0].names += note.names
        same[0].annotation.set_text(combine(same[0].names))
        note.annotation.remove()
    return kept


def place_annotations(ax: Axes, notes: list[Note], renderer: RendererBase) -> None:
    """Merge the annotations of overlapping markers, then let adjustText move them, inside the axes, clear of each
    other, of every marker and of the legend; one moved away from its marker keeps a thin line to it, in its colour.
    Needs the figure laid out (drawn) once."""
    from adjustText import adjust_text
    from matplotlib.transforms import Bbox

    points = renderer.points_to_pixels(1.0)
    room = MARKER_ROOM * points
    groups = merge_neighbours(ax, notes, room)
    frame = ax.get_window_extent(renderer)
    for note, _ in groups:  # each starts on its marker's side that faces the middle: an outermost one starts inside
        x = ax.transData.transform(note.annotation.xy)[0]
        note.annotation.set_horizontalalignment("right" if x > (frame.x0 + frame.x1) / 2 else "left")
    legend = ax.get_legend()
    avoid = [Bbox.from_extents(x - room, y - room, x + room, y + room) for _, own in groups for x, y in own]
    avoid += [legend.get_window_extent(renderer)] if legend else []
    to_data = ax.transData.inverted()  # adjustText takes the boxes to avoid in data coordinates
    line = {"arrowstyle": "-", "linewidth": 0.5, "shrinkA": 1, "shrinkB": MARKER_ROOM, "zorder": 5}
    # annotations push each other harder than by default, so that a cluster's spread out; adjustText's swapping of
    # annotations whose lines cross is left out: it comes after the other moves and can undo them
    _, leaders = adjust_text([note.annotation for note, _ in groups], ax=ax, iter_lim=ADJUST_STEPS,
                             objects=[box.transformed(to_data) for box in avoid], force_text=(0.5, 1.0),
                             prevent_crossings=False, min_arrow_len=LEADER_FROM * points, arrowprops=line)
    for leader in leaders:
        leader.set_color(leader.patchA.get_color())


def legend_order(series: tuple[str, bool, str]) -> tuple[int, str, bool, str]:
    """The filter first, then the rules it is compared with, then the references."""
    order = (*LEARNED, *BASELINES, "vanilla", *ORACLES)
    policy = series[0]
    return (order.index(policy) if policy in order else len(order), *series)


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy against NFE and wall-clock speedup, one row of panels per gen length: each learned policy's settings
    as a curve (its knob: the threshold, or the reinforced policy's speed), each rule's settings as points, one
    series per policy, EoTP and cache (with EoTP: a solid curve, a rule's marker edged in black; hollow markers: with
    a KV cache), each point annotated with its parameter (or its series' name) clear of the other annotations and
    markers, the Pareto frontier circled, and ``title`` (the headline in words) above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["gen_length"] for r in rows})
    fig, axes = plt.subplots(len(lengths), 2, figsize=(11, 4.2 * len(lengths) + 0.3 * bool(title)), dpi=110,
                             squeeze=False, layout="constrained")
    notes: dict[Axes, list[Note]] = {}
    for row_axes, gen_length in zip(axes, lengths):
        group = [r for r in rows if r["gen_length"] == gen_length]
        for ax, axis, name in zip(row_axes, ("nfe", "wall"), ("NFE", "wall-clock")):
            speed = f"speedup_{axis}"
            series = sorted({(r["policy"], r["eotp"], r["cache"]) for r in group}, key=legend_order)
            for policy, eotp, cache in series:
                colour, marker = STYLES.get(policy, OTHER_STYLE)
                pts = sorted((r for r in group if (r["policy"], r["eotp"], r["cache"]) == (policy, eotp, cache)),
                             key=lambda r: r[speed])
                drawn = point_labels(pts, speed)
                learned = policy in LEARNED
                label = series_name(policy, eotp, cache)
                ax.plot([x for x, _, _ in drawn], [y for _, y, _ in drawn], marker=marker, color=colour,
                        markerfacecolor=colour if cache == "none" else "white",
                        markeredgecolor="black" if eotp and not learned else colour,
                        linestyle=("-" if eotp else "--") if learned else "none",
                        linewidth=2 if learned else 1.2, markersize=8 if learned else 6, zorder=4 if learned else 2,
                        label=label)
            for policy in dict.fromkeys(policy for policy, _, _ in series):  # one annotation per point and family
                colour, _ = STYLES.get(policy, OTHER_STYLE)
                pts = sorted((r for r in group if r["policy"] == policy), key=lambda r: r[speed])
                for x, y, names in point_labels(pts, speed):
                    if math.isfinite(x):  # placed once the figure is laid out; the layout leaves them out
                        annotation = ax.annotate(  # a pale backing keeps one on a line legible
                            combine(names), (x, y), fontsize=6.5, color=colour, zorder=5, in_layout=False,
                            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none",
                                  "alpha": 0.8})
                        notes.setdefault(ax, []).append(Note(annotation, policy, names))
            front = sorted((r for r in group if r[f"frontier_{axis}"]), key=lambda r: r[speed])
            ax.plot([p[speed] for p in front], [100 * p["accuracy"] for p in front], color="black",
                    linewidth=1, drawstyle="steps-post", zorder=0)
            ax.scatter([p[speed] for p in front], [100 * p["accuracy"] for p in front], s=160,
                       facecolors="none", edgecolors="black", label="Pareto frontier", zorder=3)
            if any(math.isfinite(r[speed]) for r in group):  # without a vanilla row there is no speedup
                ax.set_xscale("log")
            source = "" if axis == "nfe" else f": {group[0]['wall_source']}"
            ax.set_xlabel(f"speedup over vanilla ({name}{source})")
            ax.set_ylabel("exact-match accuracy (%)")
            ax.set_title(f"gen length {gen_length}: accuracy vs {name} speedup")
            ax.margins(x=0.1, y=0.12)  # room for the annotations of the outermost points
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.canvas.draw()  # fixes the layout, so that annotations can be placed where they show
    for ax, placed in notes.items():
        place_annotations(ax, placed, fig.canvas.get_renderer())
    fig.savefig(path)
    plt.close(fig)


def run(ctx: StageContext, items: list[int] | None = None) -> Artifact:
    """The frontier of the sweep's results, as a table, a plot and a W&B run."""
    cfg = ctx.cfg
    results = collect(ctx)
    if not results:
        raise RuntimeError(f"no sweep results for experiment {cfg.experiment_name!r}; run stage=sweep first")
    timed = latest_benchmark(ctx)
    frontier = spec(ctx, [r.key for r in results], timed)

    rows = frontier_rows(results, batch1_speedups(timed))

    def compute(work: Path) -> dict[str, Any]:
        figures = headline(rows, cfg.aggregate.tolerance)
        write_csv(rows, work / "frontier.csv")
        (work / "frontier.md").write_text(markdown(rows, summary_sentences(figures, cfg.aggregate.tolerance)))
        plot(rows, work / "frontier.png", plot_title(figures))
        return {"settings": len(rows), **figures}

    inputs = {r.key: r for r in results} | ({"benchmark": timed} if timed else {})
    artifact = ctx.store.materialize(frontier, compute, force=ctx.forced("aggregate"), inputs=inputs)
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
