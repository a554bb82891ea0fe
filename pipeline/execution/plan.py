"""The one plan of a command: the graph of its stages' nodes, computed from the artifact keys alone (nothing is
decoded or trained), for every executor. The local executor (:mod:`pipeline.execution.local`) runs the nodes in
order in one process; the Slurm launcher (:mod:`pipeline.execution.slurm`) submits them as arrays of jobs.

A node is one stage's work, split in parts a cluster runs as array tasks: trajectory shards, filter training
(which drives any on-policy rounds itself), the policy's reinforcement fine-tuning (when the grid decodes with it),
the sweep's settings (rules at once, learned settings after the filter and the policy), the aggregation, and a
stage run whole (benchmark, evaluate, pretrain, score_references). A node whose artifacts are complete has no parts
to submit; one whose upstream runs again is run again, and its own run then reuses whatever is still current (the
stages' usual checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.artifacts.store import ArtifactSpec, ArtifactStore
from pipeline.configuration.command import stages_to_run, sweep_settings
from pipeline.decoding.settings import DecodeSettings
from pipeline.learning.trajectories import shard_name
from pipeline.stages import aggregate, sweep, train_filter, train_policy, trajectories
from pipeline.stages.context import StageContext


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
    items: list[int] | None = None  # every piece the node covers (the sweep's settings), missing or not

    @property
    def complete(self) -> bool:
        return not self.parts


def plan(ctx: StageContext, multirun: bool = False) -> list[Node]:
    """The nodes of ``cfg.stage`` and of what it needs (``all``: the whole pipeline), upstream first, each knowing
    what is missing. In a Hydra multirun job the sweep is the job's own ``decode`` setting."""
    cfg = ctx.cfg
    wanted = stages_to_run(cfg, multirun)
    nodes: list[Node] = []
    rerun: set[str] = set()  # nodes that will run, so their dependents must run after them

    def add(node: Node, upstream_changes: bool) -> None:
        if upstream_changes and node.complete:  # recomputed upstream: the job checks what is still current
            node.parts = [[]]
        if not node.complete:
            rerun.add(node.name)
        nodes.append(node)

    def whole(stage: str, spec: ArtifactSpec, after: str) -> Node:
        """A stage run as one job: nothing to run when its artifact is complete."""
        return Node(stage, stage, [] if ctx.store.load(spec) else [[]], [after] if after in rerun else [],
                    str(ctx.store.path(spec)), keys=[spec.key])

    if "trajectories" in wanted:
        add(trajectory_node(ctx), False)
    if "train_filter" in wanted:
        add(whole("train_filter", train_filter.spec(ctx), "trajectories"), "trajectories" in rerun)
    if "train_policy" in wanted:
        add(whole("train_policy", train_policy.spec(ctx), "train_filter"), "train_filter" in rerun)
    settings = sweep_settings(cfg, multirun) if {"sweep", "aggregate"} & set(wanted) else []
    if "sweep" in wanted:
        for node in sweep_nodes(ctx, settings, [n for n in ("train_filter", "train_policy") if n in rerun]):
            add(node, bool(node.after))
    if "aggregate" in wanted:
        # a damaged result is passed over here: its sweep node recomputes it before the aggregate lists it again
        listing = ArtifactStore(cfg.output_dir, verify=cfg.verify_artifacts, read_only=True)
        keys = {sweep.spec_for(ctx, s).key for s in settings} | {a.key for a in aggregate.labelled(ctx, listing)}
        s = aggregate.spec(ctx, sorted(keys))
        after = [n.name for n in nodes if n.stage == "sweep" and n.name in rerun]
        add(Node("aggregate", "aggregate", [] if ctx.store.load(s) else [[]], after, str(ctx.store.path(s)),
                 keys=[s.key]), bool(after))
    for stage in ("benchmark", "evaluate", "score_references", "pretrain"):  # run whole, whatever is stored
        if stage in wanted:
            nodes.append(Node(stage, stage, [[]], [n for n in ("train_filter", "train_policy") if n in rerun],
                              str(cfg.output_dir)))
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


def sweep_nodes(ctx: StageContext, settings: list[DecodeSettings], learner_reruns: list[str]) -> list[Node]:
    """The grid's settings in two arrays: ``sweep`` (rules, vanilla, oracle: they need no filter, so they start
    at once) and ``sweep_filter`` (the learned settings, after the filter and policy stages in ``learner_reruns``
    that run again). An oracle setting shares a task with the vanilla decode whose outputs it replays, so that
    decode runs once. With ``sweep.num_shards`` > 1 a task is one prompt shard of such a group (the oracle's after
    its vanilla's); its pieces are ``setting * num_shards + shard`` (:func:`pipeline.stages.sweep.run`)."""
    count = ctx.cfg.sweep.num_shards
    keys = [sweep.spec_for(ctx, s).key for s in settings]
    learned = {i for i, s in enumerate(settings) if s.learned and not s.filter_path}
    nodes = []
    for name, members in (("sweep", [i for i in range(len(settings)) if i not in learned]),
                          ("sweep_filter", sorted(learned))):
        if not members:
            continue
        rerun = bool(learner_reruns) and name == "sweep_filter"
        missing = [i for i in members if rerun or ctx.store.load(sweep.spec_for(ctx, settings[i])) is None]
        written = {i: set() if rerun else written_shards(ctx, settings[i]) for i in missing}
        units = [[i * count + j for i in group if j not in written[i]] for group in groups(settings, missing)
                 for j in range(count)]
        units += [[i * count] for i in missing if len(written[i]) == count]  # all written, not merged: merge
        done = count * (len(members) - len(missing)) + sum(len(shards) for shards in written.values())
        nodes.append(Node(name, "sweep", chunk([unit for unit in units if unit], ctx.cfg.launcher.sweep_tasks),
                          learner_reruns if rerun else [], str(ctx.store.root / "sweep"), done=done,
                          total=count * len(members), keys=[keys[i] for i in members],
                          items=[i * count + j for i in members for j in range(count)]))
    return nodes


def written_shards(ctx: StageContext, setting: DecodeSettings) -> set[int]:
    """The prompt shards of an unfinished setting already written (whether still current, the job checks)."""
    count = ctx.cfg.sweep.num_shards
    if count == 1:
        return set()
    folder = sweep.shards_dir(ctx, sweep.spec_for(ctx, setting))
    return {j for j in range(count) if (folder / shard_name(j, count) / sweep.SHARD_RECORD).exists()}


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
