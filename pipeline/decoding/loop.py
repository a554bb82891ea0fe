"""The one semi-autoregressive block decoding loop every policy, stage and test goes through.

A batch of left-padded prompts is followed by ``gen_length`` mask tokens. Blocks are decoded left to right;
at each step the samples that still have masks in the current block run one forward pass (one NFE each), the
policy picks positions to commit, and an optional observer sees the step. With EoTP an end rule
(:mod:`pipeline.decoding.eotp`) cuts a sample's sequence once its text has ended: later positions become
end-of-text, later forward passes are shorter and finished samples drop out of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from models.errors import ConfigError, DecodeStall, NonFiniteError
from pipeline.decoding.eotp import Sequences, Step, build_end_rule
from pipeline.decoding.ranking import Ranker, ReferenceRanker, ranking_dtype
from pipeline.decoding.schedule import dream_count, dream_share, gumbel_argmax, vanilla_schedule
from pipeline.decoding.settings import DecodeSettings
from pipeline.decoding.step import Policy, StepView


@dataclass
class DecodeOutput:
    tokens: torch.Tensor  # [n, gen_length] generated window (end-of-text after a cut)
    nfe: torch.Tensor  # [n] forward passes each sample took part in
    wall_time: float  # seconds for the whole call
    sample_seconds: list[float] = field(default_factory=list)  # per sample: wall time of its batch / batch size
    forward_seconds: float = 0.0  # of wall_time, the model's forward passes alone: the floor of any decoder


class ForwardClock:
    """Adds up the seconds spent inside the model's forward passes (synchronising CUDA so the time is the
    kernels', not the launch's), so every decode reports its own floor and the loop's overhead above it."""

    def __init__(self, device: str | torch.device) -> None:
        self.cuda = str(device).startswith("cuda")
        self.seconds = 0.0

    def __call__(self, model: torch.nn.Module, *args, **kwargs):
        tic = time.perf_counter()
        out = model(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - tic
        return out


Observer = Callable[[StepView, torch.Tensor], None]


def check_prompts(prompts: Sequence[Sequence[int]], gen_length: int, max_context: int | None) -> None:
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if max_context is not None and len(prompt) + gen_length > max_context:
            raise ConfigError("decode.gen_length", gen_length,
                              f"prompt {i} has {len(prompt)} tokens and with them this exceeds the model's context "
                              f"of {max_context}; allowed: prompt length + gen_length <= {max_context}")


@torch.inference_mode()  # lighter than no_grad: no version counters or view tracking per op
def generate_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    policy: Policy,
    settings: DecodeSettings,
    mask_id: int,
    eos_id: int,
    references: torch.Tensor | None = None,
    observer: Observer | None = None,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    end_ids: Sequence[int] = (),
    track_history: bool = False,
    clock: ForwardClock | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one batch; returns (window tokens [n, gen_length], NFE [n]) on the CPU.

    ``end_ids`` are the tokens that end the text besides ``eos_id`` (end-of-turn); EoTP cuts after any of them.
    With ``track_history`` (or a policy that reads it) each step also sees how every position's prediction moved
    since the block's previous step.
    """
    n, prompt_len = len(prompts), max(len(p) for p in prompts)
    gen, width = settings.gen_length, settings.block_length
    total = prompt_len + gen
    x = torch.full((n, total), mask_id, dtype=torch.long, device=device)
    attention = torch.zeros((n, total), dtype=torch.bool, device=device)
    attention[:, prompt_len:] = True
    for i, prompt in enumerate(prompts):  # left padding keeps every window at the same offset
        x[i, prompt_len - len(prompt) : prompt_len] = torch.tensor(list(prompt), dtype=torch.long, device=device)
        x[i, : prompt_len - len(prompt)] = eos_id
        attention[i, prompt_len - len(prompt) : prompt_len] = True
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    pads = [prompt_len - len(p) for p in prompts]
    seq_end = torch.full((n,), total, dtype=torch.long, device=device)  # EoTP cut per sample
    nfe = torch.zeros(n, dtype=torch.long)
    policy.prepare(n, references)
    steps = settings.steps_per_block
    ends = torch.tensor(sorted({eos_id, *end_ids}), device=device)
    end_rule = build_end_rule(settings)
    seqs = Sequences(x, seq_end, prompt_len, eos_id, mask_id, ends)
    forward = clock or ForwardClock(device)

    columns = torch.arange(total, device=device)
    # keys need hiding only behind left padding or an EoTP cut; without either the model runs unmasked (faster)
    masked_keys = end_rule.cuts or any(pads)
    reference = settings.ranking_precision != "float32"  # positions chosen as the references choose them
    for block in range(settings.num_blocks):
        start = prompt_len + block * width
        mask_count = (x[:, start : start + width] == mask_id).sum(-1)
        if not bool(mask_count.any()):  # every sample cut before this block (EoTP): nothing to decode
            continue
        schedule = vanilla_schedule(mask_count, steps)
        history = StepHistory(n, width, device) if track_history or policy.uses_history else None
        step = 0
        idle = torch.zeros(n, dtype=torch.long, device=device)  # steps in a row a sample's block did not move
        while True:
            rows = (x[:, start : start + width] == mask_id).any(-1).nonzero().squeeze(-1)
            if rows.numel() == 0 or (not policy.adaptive and step >= steps):
                break
            if step == 0 or settings.cache == "none":
                end = max(int(seq_end[rows].max()), start + width)  # the whole block is queried; cut keys hidden
                keys = attention[rows, :end] & (columns[None, :end] < seq_end[rows, None]) if masked_keys else None
                out = forward(model, x[rows, :end], attention_mask=keys, position_ids=positions[rows, :end],
                            **({"return_cache": True} if settings.cache != "none" else {}))
                raw = out.logits[:, start : start + width]
                ahead, ahead_from = out.logits, 0  # every position's prediction, for EoTP's predicted rule
                cache, cache_rows = out.get("cache") if settings.cache != "none" else None, rows
            else:  # Fast-dLLM caches: refreshed at the block's first step, reused (stale) for the others
                past = cache.select(torch.searchsorted(cache_rows, rows))
                stop = end if settings.cache == "prefix" else start + width
                keys = attention[rows, :end] & (columns[None, :end] < seq_end[rows, None]) if masked_keys else None
                out = forward(model, x[rows, start:stop], attention_mask=keys, position_ids=positions[rows, start:stop],
                              past=past, past_offset=start)
                raw = out.logits[:, :width]
                ahead, ahead_from = out.logits, start
            logits = raw.to(torch.float32, copy=True)  # a copy: raw (and EoTP's view ahead) keep the mask's logit
            if settings.mask_token == "excluded":  # the project's rule: a block always fills
                logits[..., mask_id] = float("-inf")
            nfe[rows.cpu()] += 1
            block_tokens = x[rows, start : start + width]
            masked = block_tokens == mask_id
            predicted = gumbel_argmax(logits, settings.temperature, generator)
            if reference and settings.schedule == "dream" and settings.temperature == 0:  # Dream: probs.max
                predicted = torch.softmax(logits.to(ranking_dtype(settings, raw)), dim=-1).argmax(-1)
            probs = torch.softmax(logits, dim=-1)
            confidence = probs.gather(-1, predicted[..., None]).squeeze(-1)
            scores = ranking_scores(settings, raw, probs, predicted, generator)
            if reference and settings.remasking == "low_confidence":  # what the references' filters read
                confidence = scores.float()
            if settings.remasking == "origin":  # each masked position independently, as its score fell
                k = (masked & (1 - scores < dream_share(step, steps))).sum(-1).clamp(min=int(policy.adaptive))
            elif settings.schedule == "dream":
                k = dream_count(masked.sum(-1), step, steps).clamp(min=int(policy.adaptive))
            else:
                k = schedule[rows, min(step, steps - 1)].clamp(min=int(policy.adaptive))
            kl, unchanged = history.update(rows, logits, predicted) if history is not None else (None, None)
            seq_end_rows = seq_end[rows]
            cut = (columns[None, start : start + width] >= seq_end_rows[:, None]) if end_rule.pads_filter else None
            ranker = Ranker() if not reference else reference_ranker(
                settings, step, rows, pads, start, width, seq_end_rows)
            view = StepView(logits, predicted, confidence, scores, masked, k, rows, block, start - prompt_len, step,
                            ends, kl, unchanged, ranker, cut)
            check_finite(scores + confidence, masked, raw.dtype, block, step)  # finite iff both are
            commit, tokens = policy.select(view)
            commit &= masked
            if policy.adaptive:  # every step commits, so a block ends within its length whatever the rule says
                commit, tokens = at_least_one(commit, tokens, view)
                if settings.mask_token == "included":  # committing the mask token itself moves nothing
                    idle[rows] = torch.where((commit & (tokens != mask_id)).any(-1), 0, idle[rows] + 1)
                    check_stall(idle, width, block)
            refs = None if references is None else references[rows]
            moment = Step(view, start, ahead, ahead_from, refs, policy.accepted)
            decided = end_rule.before_commit(seqs, moment)  # the published rule chooses before the commit
            x[rows, start : start + width] = torch.where(commit, tokens, block_tokens)
            if observer is not None:
                observer(view, commit)
            end_rule.after_commit(seqs, moment, commit, tokens, decided)
            step += 1
    return x[:, prompt_len:].cpu(), nfe


def check_finite(values: torch.Tensor, masked: torch.Tensor, dtype: torch.dtype, block: int, step: int) -> None:
    """A NaN score or confidence would rank nothing and commit garbage: fail loudly, naming where it happened."""
    if not bool((torch.isfinite(values) | ~masked).all()):
        raise NonFiniteError(f"the model's scores are not finite (NaN or inf) at block {block}, step {step} of the "
                             f"decode, in {str(dtype).removeprefix('torch.')}: its weights or logits overflow; check "
                             "the checkpoint, or decode in model.dtype=float32")


def at_least_one(commit: torch.Tensor, tokens: torch.Tensor, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows where an adaptive rule committed nothing take the schedule's top-k (at least one) of their predicted
    tokens. The published rules always commit one; this keeps any other from stalling a block forever."""
    idle = ~commit.any(-1)  # no host sync: the fallback is computed for every row and kept where idle
    fallback = view.top_k(view.scores, view.masked, view.k.clamp(min=1)) & idle[:, None]
    return commit | fallback, torch.where(fallback, view.predicted, tokens)


def check_stall(idle: torch.Tensor, width: int, block: int) -> None:
    """With ``mask_token=included`` (the references' argmax), a model that keeps predicting the mask token commits
    nothing real; the references' ``while`` loops then never end. More steps without progress than the block has
    positions is such a stall: stop with one line instead."""
    if bool((idle > width).any()):
        raise DecodeStall(f"the model predicted only the mask token for {width + 1} steps in a row at block {block}, "
                          "so the block cannot fill (the references would loop forever here); decode with "
                          "decode.mask_token=excluded (the project's rule: the mask token is never committed)")


def reference_ranker(settings: DecodeSettings, step: int, rows: torch.Tensor, pads: list[int], start: int,
                     width: int, seq_end: torch.Tensor) -> ReferenceRanker:
    """Where the block sits in the tensor a reference ranks, per active sample, as that sample alone: the whole
    sequence on a full pass (LLaDA, Dream, Fast-dLLM's first step of a block), from the block's start to the
    sequence's end on Fast-dLLM's prefix-cache steps, the block itself on its dual-cache steps."""
    ends, pad = seq_end.tolist(), [pads[r] for r in rows.tolist()]
    if step == 0 or settings.cache == "none":
        return ReferenceRanker([start - p for p in pad], [e - p for e, p in zip(ends, pad)])
    if settings.cache == "prefix":
        return ReferenceRanker([0] * len(ends), [e - start for e in ends])
    return ReferenceRanker([0] * len(ends), [width] * len(ends))


def ranking_scores(settings: DecodeSettings, raw: torch.Tensor, probs: torch.Tensor, predicted: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """What a step ranks masked positions by: the predicted token's probability (LLaDA's low_confidence, Dream's
    maskgit_plus), random numbers (LLaDA's random; Dream's origin, one minus its uniform draw), the top-1 minus
    top-2 probability (Dream's topk_margin) or the negative entropy with Dream's 1e-10 inside the log (Dream's
    entropy).

    ``probs`` is the float32 softmax with the mask token excluded; ``ranking_precision=model|float64`` ranks as
    the references compute it instead, from the ``raw`` logits over the whole vocabulary in the model's dtype
    (LLaDA's ``generate``: bf16 on a GPU) or in float64 (Fast-dLLM's ``get_transfer_index``).
    """
    if settings.remasking in ("random", "origin"):
        draw = torch.rand(predicted.shape, device=predicted.device, generator=generator)
        return draw if settings.remasking == "random" else 1 - draw
    if settings.ranking_precision != "float32":
        probs = torch.softmax(raw.to(ranking_dtype(settings, raw)), dim=-1)
    if settings.remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if settings.remasking == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(-1)
    return probs.gather(-1, predicted[..., None]).squeeze(-1)


class StepHistory:
    """Per block: each position's previous log-probabilities and how long its prediction has stayed the same."""

    def __init__(self, n: int, width: int, device: str | torch.device) -> None:
        self.previous: torch.Tensor | None = None  # [n, B, V], allocated at the first step
        self.predicted = torch.full((n, width), -1, dtype=torch.long, device=device)
        self.unchanged = torch.zeros((n, width), dtype=torch.long, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, rows: torch.Tensor, logits: torch.Tensor, predicted: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(previous || current) per position (inf where there is no previous step) and the unchanged counts."""
        logp = torch.log_softmax(logits, dim=-1)
        if self.previous is None:
            self.previous = torch.zeros((len(self.seen), *logp.shape[1:]), device=logp.device)
        before = self.previous[rows]
        terms = torch.where(torch.isfinite(before), before.exp() * (before - logp), torch.zeros_like(logp))
        kl = torch.where(self.seen[rows, None], terms.sum(-1).clamp(min=0), torch.full_like(logp[..., 0], float("inf")))
        same = predicted == self.predicted[rows]
        self.unchanged[rows] = torch.where(same, self.unchanged[rows] + 1, torch.zeros_like(predicted))
        self.previous[rows], self.predicted[rows], self.seen[rows] = logp, predicted, True
        return kl, self.unchanged[rows]


def decode(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    policy: Policy,
    settings: DecodeSettings,
    mask_id: int,
    eos_id: int,
    references: torch.Tensor | None = None,
    observer: Observer | None = None,
    device: str | torch.device = "cpu",
    max_context: int | None = None,
    progress: bool = False,
    description: str = "decode",
    end_ids: Sequence[int] = (),
    track_history: bool = False,
) -> DecodeOutput:
    """Decode all prompts in batches of ``settings.batch_size``; validates everything before the first step."""
    settings.validate()
    if settings.cache != "none" and not getattr(model, "supports_block_cache", False):
        raise ConfigError("decode.cache", settings.cache, f"needs a model with block-cache support (the embedded "
                                                          f"model); allowed for {type(model).__name__}: none")
    check_prompts(prompts, settings.gen_length, max_context)
    if references is not None and references.shape != (len(prompts), settings.gen_length):
        raise ValueError(
            f"references have shape {tuple(references.shape)}; expected ({len(prompts)}, {settings.gen_length})"
        )
    if policy.needs_references and references is None:
        raise ValueError(f"decode.policy={policy.name} needs reference outputs (one per prompt) from a vanilla decode")
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    tokens, nfe, sample_seconds = [], [], []
    clock = ForwardClock(device)
    began = time.perf_counter()
    batches = range(0, len(prompts), settings.batch_size)
    for first in tqdm(batches, desc=description, disable=None if progress else True, unit="batch"):
        chunk = list(prompts[first : first + settings.batch_size])
        chunk_refs = None if references is None else references[first : first + len(chunk)].to(device)
        tic = time.perf_counter()
        out, counts = generate_batch(
            model, chunk, policy, settings, mask_id, eos_id, chunk_refs, observer_offset(observer, first), device,
            generator, end_ids, track_history, clock,
        )
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        tokens.append(out)
        nfe.append(counts)
        sample_seconds += [seconds / len(chunk)] * len(chunk)
    return DecodeOutput(torch.cat(tokens), torch.cat(nfe), time.perf_counter() - began, sample_seconds,
                        clock.seconds)


def observer_offset(observer: Observer | None, offset: int) -> Observer | None:
    """Wrap an observer so the rows it sees index the whole prompt list, not the current batch."""
    if observer is None:
        return None

    def shifted(view: StepView, commit: torch.Tensor) -> None:
        observer(replace(view, rows=view.rows + offset), commit)

    return shifted
