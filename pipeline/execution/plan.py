"""The pipeline as a DAG of cluster jobs, planned from the artifact keys alone (nothing is decoded or trained).

A node is one array of jobs running one stage: trajectory shards, filter training (which drives any on-policy
rounds itself), the policy's reinforcement fine-tuning (when the grid decodes with it), the sweep's settings
(rules at once, learned settings after the filter and the policy) and the aggregation. A node whose artifacts
are complete is not run; one whose upstream runs again is run again, and its own job then reuses whatever is
still current (the stages' usual checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.configuration.command import expand_grid, stages_to_run
from pipeline.decoding.settings import DecodeSettings
from pipeline.learning.trajectories import shard_name
from pipeline.stages import aggregate, sweep, train_filter, train_policy, trajectories
from pipeline.stages.context import StageContext

DAG_STAGES = ("all", "trajectories", "train_filter", "train_policy", "sweep", "aggregate")


@dataclass
class Node:
    """One stage's array of jobs: ``parts[i]`` is what array task i computes (shard indices for trajectories,
    indices into the experiment's grid for the sweep; empty for a stage run whole)."""

    name: str
    stage: str
    parts: list[list[int]]
    after: list[str]
    results: str  # where the results land
    done: int = 0  # pieces already complete (shards, settings)
    total: int = 1
    keys: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.parts


def plan(ctx: StageContext) -> list[Node]:
    """The nodes of ``cfg.stage`` (``all``: the whole pipeline), upstream first, each knowing what is missing."""
    cfg = ctx.cfg
    wanted = stages_to_run(cfg, multirun=False) if cfg.stage in DAG_STAGES else []
    nodes: list[Node] = []
    rerun: set[str] = set()  # nodes that will run, so their dependents must run after them

    def add(node: Node, upstream_changes: bool) -> None:
        if upstream_changes and node.complete:  # recomputed upstream: the job checks what is still current
            node.parts = [[]]
        if not node.complete:
            rerun.add(node.name)
        nodes.append(node)

    if "trajectories" in wanted:
        add(trajectory_node(ctx), False)
    if "train_filter" in wanted:
        s = train_filter.spec(ctx)
        node = Node("train_filter", "train_filter", [] if ctx.store.load(s) else [[]],
                    ["trajectories"] if "trajectories" in rerun else [], str(ctx.store.path(s)), keys=[s.key])
        add(node, "trajectories" in rerun)
    if "train_policy" in wanted:
        s = train_policy.spec(ctx)
        node = Node("train_policy", "train_policy", [] if ctx.store.load(s) else [[]],
                    ["train_filter"] if "train_filter" in rerun else [], str(ctx.store.path(s)), keys=[s.key])
        add(node, "train_filter" in rerun)
    if "sweep" in wanted:
        for node in sweep_nodes(ctx, [n for n in ("train_filter", "train_policy") if n in rerun]):
            add(node, bool(node.after))
    if "aggregate" in wanted:
        keys = {sweep.spec_for(ctx, s).key for s in expand_grid(cfg)} | {a.key for a in aggregate.labelled(ctx)}
        s = aggregate.spec(ctx, sorted(keys))
        after = [n.name for n in nodes if n.name.startswith("sweep") and n.name in rerun]
        add(Node("aggregate", "aggregate", [] if ctx.store.load(s) else [[]], after, str(ctx.store.path(s)),
                 keys=[s.key]), bool(after))
    return nodes


def trajectory_node(ctx: StageContext) -> Node:
    """One array task per shard not yet written (or just the one ``trajectories.shard`` names)."""
    t, s = ctx.cfg.trajectories, trajectories.spec(ctx)
    shards = range(t.num_shards) if t.shard is None else [t.shard]
    if ctx.store.load(s) is not None:
        missing = []
    else:
        work = ctx.store.work_dir(s) / "shards"
        missing = [i for i in shards if not (work / shard_name(i, t.num_shards)).exists()]
        if not missing:  # every shard written but the artifact never finalised: one job finalises it
            return Node("trajectories", "trajectories", [[]], [], str(ctx.store.path(s)), done=len(shards),
                        total=len(shards), keys=[s.key])
    return Node("trajectories", "trajectories", [[i] for i in missing], [], str(ctx.store.path(s)),
                done=len(shards) - len(missing), total=len(shards), keys=[s.key])


def sweep_nodes(ctx: StageContext, learner_reruns: list[str]) -> list[Node]:
    """The grid's settings in two arrays: ``sweep`` (rules, vanilla, oracle: they need no filter, so they start
    at once) and ``sweep_filter`` (the learned settings, after the filter and policy stages in ``learner_reruns``
    that run again). An oracle setting shares a task with the vanilla decode whose outputs it replays, so that
    decode runs once."""
    settings = expand_grid(ctx.cfg)
    keys = [sweep.spec_for(ctx, s).key for s in settings]
    learned = {i for i, s in enumerate(settings) if s.learned and not s.filter_path}
    nodes = []
    for name, members in (("sweep", [i for i in range(len(settings)) if i not in learned]),
                          ("sweep_filter", sorted(learned))):
        if not members:
            continue
        rerun = bool(learner_reruns) and name == "sweep_filter"
        missing = [i for i in members if rerun or ctx.store.load(sweep.spec_for(ctx, settings[i])) is None]
        parts = chunk(groups(settings, missing), ctx.cfg.launcher.sweep_tasks)
        nodes.append(Node(name, "sweep", parts, learner_reruns if rerun else [],
                          str(ctx.store.root / "sweep"), done=len(members) - len(missing), total=len(members),
                          keys=[keys[i] for i in members]))
    return nodes


def groups(settings: list[DecodeSettings], indices: list[int]) -> list[list[int]]:
    """``indices`` grouped so that settings replaying the same vanilla decode go together, vanilla first."""
    by_reference: dict[object, list[int]] = {}
    for i in indices:
        s = settings[i]
        root = sweep.vanilla_of(s).identity() if s.needs_references or s.policy == "vanilla" else i
        by_reference.setdefault(repr(root), []).append(i)
    return [sorted(g, key=lambda i: settings[i].policy != "vanilla") for g in by_reference.values()]


def chunk(groups_: list[list[int]], tasks: int | None) -> list[list[int]]:
    """At most ``tasks`` array tasks (None: one per group), groups dealt round-robin so tasks stay even."""
    if tasks is None or tasks >= len(groups_):
        return groups_
    parts: list[list[int]] = [[] for _ in range(tasks)]
    for n, group in enumerate(groups_):
        parts[n % tasks].extend(group)
    return parts
