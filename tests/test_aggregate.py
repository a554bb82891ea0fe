"""The aggregate stage's headline: parameters in words, the filter-vs-rules dominance counts, the oracle ratio, the
sentences and the plot, on hand-made sweep results (no model, no decoding)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pipeline.stages import aggregate

TOLERANCE = 0.005


def result(label: str, policy: str, accuracy: float, nfe: float, gen_length: int = 64, **decode):
    """A stand-in for a sweep Artifact: what frontier_rows reads (manifest settings, figures, key)."""
    figures = {"label": label, "policy": policy, "accuracy": accuracy, "full_match": accuracy, "nfe_mean": nfe,
               "nfe_p50": round(nfe), "nfe_p90": round(nfe) + 1, "tokens_per_s": 1000 / nfe, "wall_time_s": nfe / 10}
    settings = {"decode": {"policy": policy, "gen_length": gen_length, "block_length": 16, **decode}}
    return SimpleNamespace(key=label.replace(" ", "_"), manifest={"settings": settings, "figures": figures},
                           figures=figures)


def sweep_results():
    """Gen length 64: every rule family, filter settings with and without EoTP that match some rules (each only
    rules with its EoTP choice and cache), one that is faster but less accurate than a rule (must not count), a
    cached rule no filter setting shares the cache of, and two oracles."""
    return [
        result("vanilla L=64", "vanilla", 0.93, 64.0),
        result("vanilla eotp L=64", "vanilla", 0.92, 38.0, eotp=True),
        result("egp L=64", "egp", 0.93, 4.3),
        result("egp eotp L=64", "egp", 0.93, 3.0, eotp=True),
        result("egp eotp dual-cache L=64", "egp", 0.93, 2.5, eotp=True, cache="dual"),
        result("threshold t=0.9 L=64", "threshold", 0.915, 5.9, threshold=0.9),
        result("threshold t=0.9 eotp L=64", "threshold", 0.905, 4.6, threshold=0.9, eotp=True),
        result("threshold t=0.9 eotp dual-cache L=64", "threshold", 0.905, 4.6, threshold=0.9, eotp=True,
               cache="dual"),
        result("threshold t=0.5 eotp L=64", "threshold", 0.85, 2.9, threshold=0.5, eotp=True),
        result("threshold t=0.3 eotp L=64", "threshold", 0.84, 2.1, threshold=0.3, eotp=True),
        result("factor f=1.0 L=64", "factor", 0.90, 5.0, factor=1.0),
        result("entropy_bounded L=64", "entropy_bounded", 0.92, 4.5, gamma=0.1),
        result("klass L=64", "klass", 0.94, 6.0, threshold=0.9, kl_bound=0.01),
        # without EoTP: matches "threshold t=0.9" (5.0 <= 5.9, 0.915 >= 0.915) and "factor" (5.0 <= 5.0, 0.915 >= 0.90),
        # not "entropy_bounded" (slower and less accurate) nor "klass" (less accurate)
        result("filter t=0.9 L=64", "filter", 0.915, 5.0, threshold=0.9),
        # with EoTP: matches "threshold t=0.9 eotp"; faster and more accurate than "entropy_bounded" (4.0 < 4.5,
        # 0.93 > 0.92), "threshold t=0.9" and "factor", but those run without EoTP, so that does not count
        result("filter t=0.97 eotp L=64", "filter", 0.93, 4.0, threshold=0.97, eotp=True),
        result("filter t=0.5 eotp L=64", "filter", 0.85, 2.8, threshold=0.5, eotp=True),
        result("filter t=0.7 eotp L=64", "filter", 0.85, 2.8, threshold=0.7, eotp=True),
        # faster than "threshold t=0.3 eotp" (2.0 < 2.1) but less accurate (0.80 < 0.84): matches nothing
        result("filter t=None eotp L=64", "filter", 0.80, 2.0, threshold=None, eotp=True),
        # another gen length without filter settings: no claim to check there
        result("vanilla L=256", "vanilla", 0.90, 256.0, gen_length=256),
        result("threshold t=0.9 L=256", "threshold", 0.88, 10.0, gen_length=256, threshold=0.9),
    ]


@pytest.fixture
def rows():
    return aggregate.frontier_rows(sweep_results())


@pytest.fixture
def figures(rows):
    return aggregate.headline(rows, TOLERANCE)


def by_label(rows, label):
    (row,) = [r for r in rows if r["label"] == label]
    return row


@pytest.mark.parametrize("decode, expected", [
    ({"policy": "threshold", "threshold": 0.9}, "tau=0.9"),
    ({"policy": "filter", "threshold": 0.97}, "tau=0.97"),
    ({"policy": "filter", "threshold": None}, "tau=validated"),
    ({"policy": "filter"}, "tau=validated"),
    ({"policy": "factor", "factor": 1}, "f=1.0"),
    ({"policy": "factor", "factor": 2.5, "factor_rule": "reference"}, "f=2.5 ref"),
    ({"policy": "entropy_bounded", "gamma": 0.1}, "gamma=0.1"),
    ({"policy": "klass", "threshold": 0.9, "kl_bound": 0.01}, "tau=0.9, kl<=0.01"),
    ({"policy": "rl_filter", "threshold": None}, "tau=validated"),  # a policy trained before the speed knob
    ({"policy": "rl_filter", "threshold": None, "speed": 2}, "speed=2.0"),
    ({"policy": "rl_filter", "threshold": None, "speed": None}, "speed=validated"),
    ({"policy": "rl_filter", "threshold": 0.9, "speed": 0.5}, "speed=0.5, tau=0.9"),
    ({"policy": "vanilla"}, ""),
    ({"policy": "egp"}, ""),
])
def test_each_policy_knob_is_written_in_words(decode, expected):
    assert aggregate.parameter(decode) == expected


def test_rows_carry_the_parameter_and_the_old_threshold_column(rows):
    assert "parameter" in aggregate.COLUMNS and "threshold" in aggregate.COLUMNS
    assert by_label(rows, "klass L=64")["parameter"] == "tau=0.9, kl<=0.01"
    assert by_label(rows, "filter t=None eotp L=64")["parameter"] == "tau=validated"
    assert by_label(rows, "filter t=None eotp L=64")["threshold"] is None
    assert by_label(rows, "factor f=1.0 L=64")["threshold"] == 1.0  # old rows: the factor in the threshold column
    assert by_label(rows, "vanilla L=64")["parameter"] == ""
    assert by_label(rows, "threshold t=0.9 eotp dual-cache L=64")["cache"] == "dual"


def test_setting_names_add_the_parameter_only_where_the_label_lacks_it(rows):
    assert aggregate.setting_name(by_label(rows, "threshold t=0.5 eotp L=64")) == "threshold t=0.5 eotp L=64"
    assert aggregate.setting_name(by_label(rows, "factor f=1.0 L=64")) == "factor f=1.0 L=64"
    assert aggregate.setting_name(by_label(rows, "entropy_bounded L=64")) == "entropy_bounded L=64 (gamma=0.1)"
    assert aggregate.setting_name(by_label(rows, "klass L=64")) == "klass L=64 (tau=0.9, kl<=0.01)"


def test_dominance_is_counted_per_rule_family_with_the_unmatched_settings_named(figures):
    assert figures["L64/threshold_settings_matched"] == "3/5"
    assert figures["L64/factor_settings_matched"] == "1/1"
    assert figures["L64/entropy_bounded_settings_matched"] == "0/1"
    assert figures["L64/klass_settings_matched"] == "0/1"
    assert figures["L64/baseline_settings_matched"] == "4/8"
    # the cached rule has no filter setting with its cache; t=0.3 is only "beaten" by a less accurate filter;
    # entropy_bounded (no EoTP) is only beaten by a filter + EoTP setting; klass is more accurate than every filter
    assert figures["L64/unmatched"] == ("threshold t=0.9 eotp dual-cache L=64, threshold t=0.3 eotp L=64, "
                                        "entropy_bounded L=64 (gamma=0.1), klass L=64 (tau=0.9, kl<=0.01)")
    assert "L64/threshold_settings_dominated" not in figures
    assert not [k for k in figures if k.startswith("L256/")], "no filter settings at 256: nothing to claim"


def test_a_faster_but_less_accurate_filter_setting_does_not_count(rows):
    rule = by_label(rows, "threshold t=0.3 eotp L=64")
    faster = by_label(rows, "filter t=None eotp L=64")
    assert faster["nfe_mean"] < rule["nfe_mean"] and faster["accuracy"] < rule["accuracy"]
    assert (faster["eotp"], faster["cache"]) == (rule["eotp"], rule["cache"])  # only the accuracy keeps it out
    assert not aggregate.matches(faster, rule)
    group = [r for r in rows if r["gen_length"] == 64]
    checked = dict((r["label"], m) for r, m in aggregate.rule_matches(group)["threshold"])
    assert checked == {"threshold t=0.9 L=64": True, "threshold t=0.9 eotp L=64": True,
                       "threshold t=0.9 eotp dual-cache L=64": False, "threshold t=0.5 eotp L=64": True,
                       "threshold t=0.3 eotp L=64": False}


def test_a_filter_setting_matches_only_rule_settings_with_its_eotp_choice():
    rows = aggregate.frontier_rows([
        result("vanilla L=64", "vanilla", 0.93, 64.0),
        result("threshold t=0.9 L=64", "threshold", 0.91, 6.0, threshold=0.9),
        result("filter t=0.9 eotp L=64", "filter", 0.91, 4.0, threshold=0.9, eotp=True),  # faster, as accurate
        result("filter t=0.9 L=64", "filter", 0.91, 6.0, threshold=0.9),  # as fast, as accurate
    ])
    rule, with_eotp, without = (by_label(rows, label) for label in (
        "threshold t=0.9 L=64", "filter t=0.9 eotp L=64", "filter t=0.9 L=64"))
    assert with_eotp["nfe_mean"] < rule["nfe_mean"] and with_eotp["accuracy"] == rule["accuracy"]
    assert not aggregate.matches(with_eotp, rule)  # EoTP alone saves forward passes: not like with like
    assert aggregate.matches(without, rule)
    only_eotp = aggregate.headline([r for r in rows if r is not without], TOLERANCE)
    assert only_eotp["L64/baseline_settings_matched"] == "0/1"
    assert only_eotp["L64/unmatched"] == "threshold t=0.9 L=64"
    both = aggregate.headline(rows, TOLERANCE)
    assert both["L64/baseline_settings_matched"] == "1/1" and "L64/unmatched" not in both


def test_the_reinforced_policy_is_learned_and_the_training_free_rules_are_baselines():
    rows = aggregate.frontier_rows([
        result("vanilla L=64", "vanilla", 0.93, 64.0),
        result("local_leap t=0.9 L=64", "local_leap", 0.90, 6.0, threshold=0.9),
        result("credit t=0.9 L=64", "credit", 0.92, 5.0, threshold=0.9),
        result("prophet L=64", "prophet", 0.80, 3.0),
        result("filter t=0.9 L=64", "filter", 0.90, 6.0, threshold=0.9),  # matches LocalLeap only
        result("rl_filter t=0.5 L=64", "rl_filter", 0.92, 5.0, threshold=0.5),  # matches LocalLeap and credit
    ])
    figures = aggregate.headline(rows, TOLERANCE)
    assert figures["L64/local_leap_settings_matched"] == "1/1" and figures["L64/credit_settings_matched"] == "1/1"
    assert figures["L64/baseline_settings_matched"] == "2/3" and figures["L64/unmatched"] == "prophet L=64"
    assert figures["L64/filter_alone_matched"] == "1/3" and figures["L64/rl_filter_alone_matched"] == "2/3"
    assert "Each learned policy alone: filter 1 of 3, rl_filter 2 of 3." in aggregate.summary_sentences(
        figures, TOLERANCE)
    assert by_label(rows, "rl_filter t=0.5 L=64")["parameter"] == "tau=0.5"
    assert aggregate.legend_order(("rl_filter", False, "none")) < aggregate.legend_order(("threshold", False, "none"))


def test_no_unmatched_key_when_every_rule_setting_is_matched():
    rows = aggregate.frontier_rows([
        result("vanilla L=64", "vanilla", 0.93, 64.0),
        result("threshold t=0.9 L=64", "threshold", 0.91, 6.0, threshold=0.9),
        result("factor f=1.0 L=64", "factor", 0.90, 7.0, factor=1.0),
        result("filter t=0.9 L=64", "filter", 0.91, 6.0, threshold=0.9),  # equal on both axes: matched
    ])
    figures = aggregate.headline(rows, TOLERANCE)
    assert figures["L64/baseline_settings_matched"] == "2/2" and "L64/unmatched" not in figures
    assert "L64/best_filter" not in figures  # no filter + EoTP setting
    assert aggregate.summary_sentences(figures, TOLERANCE) == [
        "Learned filter vs hand-tuned rules at gen length 64: all 2 rule settings (threshold 1 of 1, factor 1 of 1) "
        "are matched or beaten (no more forward passes, no lower accuracy, same EoTP and KV cache) by a filter "
        "setting.",
        "No filter + EoTP setting at gen length 64 is within 0.5 points of vanilla (93.0%).",
    ]


def test_the_best_filter_is_compared_with_the_oracle_of_the_same_cache(figures):
    assert figures["L64/best_filter"] == "filter t=0.97 eotp L=64"
    assert figures["L64/best_filter_accuracy"] == 0.93
    assert figures["L64/best_filter_nfe_mean"] == 4.0
    assert figures["L64/best_filter_speedup_nfe"] == pytest.approx(16.0)
    assert figures["L64/oracle"] == "egp eotp L=64"  # not the faster dual-cache oracle
    assert figures["L64/best_filter_nfe_over_oracle"] == pytest.approx(4.0 / 3.0)
    assert figures["L64/vanilla_accuracy"] == 0.93


def test_the_tolerance_holds_at_its_edge():
    rows = aggregate.frontier_rows([
        result("vanilla L=64", "vanilla", 0.93, 64.0),
        result("filter t=0.9 eotp L=64", "filter", 0.925, 8.0, threshold=0.9, eotp=True),  # exactly 0.5 below
        result("filter t=0.5 eotp L=64", "filter", 0.92, 4.0, threshold=0.5, eotp=True),  # 1 point below
    ])
    figures = aggregate.headline(rows, TOLERANCE)
    assert figures["L64/best_filter"] == "filter t=0.9 eotp L=64"
    assert "L64/best_filter_nfe_over_oracle" not in figures and "L64/oracle" not in figures


def test_the_headline_sentences_carry_the_computed_numbers(figures):
    assert aggregate.summary_sentences(figures, TOLERANCE) == [
        "Learned filter vs hand-tuned rules at gen length 64: 4 of 8 rule settings (threshold 3 of 5, factor 1 of 1, "
        "entropy_bounded 0 of 1, klass 0 of 1) are matched or beaten (no more forward passes, no lower accuracy, "
        "same EoTP and KV cache) by a filter setting; not matched: threshold t=0.9 eotp dual-cache L=64, threshold "
        "t=0.3 eotp L=64, entropy_bounded L=64 (gamma=0.1), klass L=64 (tau=0.9, kl<=0.01).",
        "Best filter + EoTP within 0.5 points of vanilla (93.0%) at gen length 64: filter t=0.97 eotp L=64, 93.0% at "
        "4.0 forward passes (16.0x fewer than vanilla, 1.33x the oracle's).",
    ]
    assert aggregate.plot_title(figures) == (
        "gen length 64: learned filter matches or beats 4 of 8 hand-tuned rule settings; best filter + EoTP near "
        "vanilla: 16.0x fewer forward passes at 93.0%")


def test_the_markdown_keeps_the_table_first_and_adds_the_headline(rows, figures):
    text = aggregate.markdown(rows, aggregate.summary_sentences(figures, TOLERANCE))
    assert text.startswith("| setting | accuracy |")
    table, headline = text.split("\n## Headline\n\n")
    assert "| entropy_bounded L=64 (gamma=0.1) | 92.0 |" in table
    assert headline.splitlines()[0].startswith("- Learned filter vs hand-tuned rules at gen length 64: 4 of 8 ")
    assert "(no more forward passes, no lower accuracy, same EoTP and KV cache)" in headline.splitlines()[0]
    assert "1.33x the oracle's" in headline.splitlines()[1]
    assert "## Headline" not in aggregate.markdown(rows)


def test_coinciding_points_of_a_series_are_drawn_once_with_one_annotation(rows):
    filters = sorted((r for r in rows if r["policy"] == "filter"), key=lambda r: r["speedup_nfe"])
    drawn = aggregate.point_labels(filters, "speedup_nfe")
    assert [aggregate.combine(names) for _, _, names in drawn] == ["tau=0.9", "tau=0.97", "tau=0.5/0.7",
                                                                    "tau=validated"]
    x, y, _ = drawn[2]
    assert x == pytest.approx(64 / 2.8) and y == pytest.approx(85.0)
    assert aggregate.combine(["tau=0.9", "tau=0.5", "tau=0.7", "tau=0.5"]) == "tau=0.5/0.7/0.9"
    assert aggregate.combine(["tau=0.9, kl<=0.01", "tau=0.7, kl<=0.01"]) == "tau=0.7, kl<=0.01 / tau=0.9, kl<=0.01"
    assert aggregate.combine(["", ""]) == ""
    assert aggregate.combine(["egp + EoTP", "egp"]) == "egp / egp + EoTP"
    # across series of one family: threshold+EoTP with and without the dual cache sit at one point, labelled once
    thresholds = sorted((r for r in rows if r["policy"] == "threshold" and r["gen_length"] == 64),
                        key=lambda r: r["speedup_nfe"])
    assert [aggregate.combine(n) for _, _, n in aggregate.point_labels(thresholds, "speedup_nfe")] == [
        "tau=0.9", "tau=0.9", "tau=0.5", "tau=0.3"]


def test_the_plot_is_written_with_coinciding_points_and_validated_thresholds(rows, figures, tmp_path):
    path = tmp_path / "frontier.png"
    aggregate.plot(rows, path, aggregate.plot_title(figures))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    untitled = tmp_path / "untitled.png"
    aggregate.plot([r for r in rows if r["gen_length"] == 64], untitled)
    assert untitled.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def crowded_results():
    """The issue's cluster: filter and rule settings a hair apart (different to 3 digits, one spot on the plot)."""
    return [result("vanilla L=64", "vanilla", 0.93, 64.0), result("egp L=64", "egp", 0.93, 4.3),
            result("egp eotp L=64", "egp", 0.93, 4.29, eotp=True),
            *(result(f"filter t={t} eotp L=64", "filter", 0.85 + i / 1000, 2.8 + i / 100, threshold=t, eotp=True)
              for i, t in enumerate((0.5, 0.6, 0.7, 0.8))),
            *(result(f"threshold t={t} eotp L=64", "threshold", 0.848 + i / 1000, 2.82 + i / 100, threshold=t,
                     eotp=True) for i, t in enumerate((0.5, 0.6, 0.7)))]


def drawn_figure(rows, path, monkeypatch):
    """The frontier figure as saved, kept open to be looked at."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    aggregate.plot(rows, path, aggregate.plot_title(aggregate.headline(rows, TOLERANCE)))
    (fig,) = kept
    return fig


def named_settings(text: str) -> set[str]:
    """The settings an annotation names (what aggregate.combine joined)."""
    if " / " in text:
        return set(text.split(" / "))
    knob, _, values = text.partition("=")
    return {f"{knob}={v}" for v in values.split("/")} if values and ", " not in text else {text}


def overlap(a, b) -> bool:
    """Whether two display boxes share some area (touching edges do not count)."""
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


@pytest.mark.parametrize("results", [sweep_results, crowded_results])
def test_every_point_is_labelled_and_no_label_covers_another_or_a_marker(results, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    rows = aggregate.frontier_rows(results())
    fig = drawn_figure(rows, tmp_path / "f.png", monkeypatch)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    near = 3 * aggregate.MARKER_ROOM * renderer.points_to_pixels(1.0)  # a run of overlapping markers shares one
    for ax in fig.axes:
        gen_length = int(ax.get_title().split()[2].rstrip(":"))
        speed = "speedup_nfe" if "NFE" in ax.get_title() else "speedup_wall"
        for r in (r for r in rows if r["gen_length"] == gen_length):
            name = r["parameter"] or aggregate.series_name(r["policy"], r["eotp"], r["cache"])
            here = ax.transData.transform((r[speed], 100 * r["accuracy"]))
            labels = [t for t in ax.texts if t.get_color() == aggregate.STYLES[r["policy"]][0]
                      and name in named_settings(t.get_text()) and math.dist(ax.transData.transform(t.xy), here) < near]
            assert len(labels) == 1, f"{ax.get_title()}: {r['label']} is named by {len(labels)} labels"
        markers = [ax.transData.transform(xy) for line in ax.get_lines() if not line.get_label().startswith("_")
                   for xy in line.get_xydata()]  # the series' markers; the frontier's step line is unnamed
        boxes = {f"{t.get_text()} at {t.xy}": Text.get_window_extent(t, renderer) for t in ax.texts}
        frame = ax.get_window_extent(renderer)
        for name, box in boxes.items():
            assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), f"{name} leaves the axes"
            assert not [m for m in markers if box.contains(*m)], f"{name} covers a marker"
        clashing = [(a, b) for i, (a, box) in enumerate(boxes.items()) for b, other in list(boxes.items())[i + 1:]
                    if overlap(box, other)]
        assert not clashing, f"{ax.get_title()}: overlapping labels {clashing}"
    plt.close(fig)


def test_without_vanilla_there_is_no_speedup_and_no_best_filter(tmp_path):
    rows = aggregate.frontier_rows([
        result("threshold t=0.9 L=64", "threshold", 0.91, 6.0, threshold=0.9),
        result("filter t=0.9 L=64", "filter", 0.90, 5.0, threshold=0.9),
    ])
    assert all(math.isnan(r["speedup_nfe"]) for r in rows)
    figures = aggregate.headline(rows, TOLERANCE)
    assert figures == {"L64/threshold_settings_matched": "0/1", "L64/baseline_settings_matched": "0/1",
                       "L64/unmatched": "threshold t=0.9 L=64"}
    aggregate.plot(rows, tmp_path / "nan.png", aggregate.plot_title(figures))
    assert (tmp_path / "nan.png").stat().st_size > 0


def test_the_drawn_figure_has_its_headline_labels_and_styles(rows, figures, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure to look at instead of closing it
    aggregate.plot([r for r in rows if r["gen_length"] == 64], tmp_path / "f.png", aggregate.plot_title(figures))
    (fig,) = drawn
    assert fig.get_suptitle() == aggregate.plot_title(figures)
    nfe, wall = fig.axes
    assert nfe.get_xlabel() == "speedup over vanilla (NFE)"
    assert wall.get_xlabel() == "speedup over vanilla (wall-clock: batched wall time (sweep))"
    texts = sorted(t.get_text() for t in nfe.texts)
    assert texts == sorted(["tau=0.9", "tau=0.97", "tau=0.5/0.7", "tau=validated", "tau=0.9", "tau=0.9", "tau=0.5",
                            "tau=0.3", "f=1.0", "gamma=0.1", "tau=0.9, kl<=0.01", "vanilla", "vanilla + EoTP", "egp",
                            "egp + EoTP", "egp + EoTP + dual cache"])
    lines = {line.get_label(): line for line in nfe.get_lines()}
    assert lines["filter + EoTP"].get_marker() == "P" and lines["threshold + EoTP"].get_marker() == "o"
    assert lines["filter"].get_linestyle() == "--" and len(lines["filter"].get_xdata()) == 1
    assert lines["threshold + EoTP"].get_linestyle() == "None", "a rule's settings are points, a filter's a curve"
    assert lines["threshold + EoTP"].get_markeredgecolor() == "black" != lines["threshold"].get_markeredgecolor()
    assert lines["filter + EoTP"].get_color() == aggregate.STYLES["filter"][0]
    assert len(lines["filter + EoTP"].get_xdata()) == 3, "the two coinciding filter settings are drawn once"
    assert [t.get_text() for t in nfe.get_legend().get_texts()][:2] == ["filter", "filter + EoTP"]
    plt.close(fig)


def test_the_wall_clock_axis_uses_the_benchmarks_batch1_latency_where_it_timed_every_setting():
    results = [result("vanilla L=64", "vanilla", 0.93, 64.0), result("egp L=64", "egp", 0.93, 4.3),
               result("vanilla L=256", "vanilla", 0.90, 256.0, gen_length=256),
               result("egp L=256", "egp", 0.90, 9.0, gen_length=256)]
    key = aggregate.identity_key
    latency = {key(r.manifest["settings"]["decode"]): speedup
               for r, speedup in zip(results[:3], (1.0, 9.5, 1.0))}  # the 256 oracle was not benchmarked
    rows = {r["label"]: r for r in aggregate.frontier_rows(results, latency)}
    assert rows["egp L=64"]["speedup_wall"] == 9.5
    assert rows["egp L=64"]["wall_source"] == "batch-1 latency (stage=benchmark)"
    assert rows["egp L=256"]["speedup_wall"] == pytest.approx(256.0 / 9.0)  # the sweep's batched wall time
    assert rows["vanilla L=256"]["wall_source"] == "batched wall time (sweep)"
    text = aggregate.markdown(list(rows.values()))
    assert "gen length 64: batch-1 latency (stage=benchmark)" in text
