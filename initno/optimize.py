"""Initial noise optimisation (docs/method.md): rounds of Adam on a shift and scale of the
noise, kept inside a KL ball around N(0, I), with restarts and a fallback run.

The official control flow is followed step for step, with three deliberate fixes (each marked "Fix:"
where it lives): a successful round always wins over a failed one; the latent returned is the one
that was scored; every loop has a bound. One saving changes no number: the fallback run continues the
best round where it stopped instead of repeating its steps (see `_RunState`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from .attention import AttentionCapture, ContextTransform
from .params import InitNOParams
from .scores import Evaluation, Scores, evaluate_attention, kl_divergence, kl_gradients

ProgressCallback = Callable[[int, int, int, Scores], None]
"""(image index, round index, step index, scores) after each UNet pass; the fallback run is round
`max_rounds`."""


@dataclass
class Denoiser:
    """How to run the UNet once at the first timestep, conditional branch only.

    `apply(latent, timesteps, cond)` is the host's model call (A1111: `sd_model.apply_model`); `unet` is
    the module inside it whose attention is captured and whose parameters are frozen meanwhile.
    """

    unet: nn.Module
    apply: Callable[[torch.Tensor, torch.Tensor, Any], Any]
    timestep: float
    context_transform: ContextTransform | None = None
    downsample: int = 4
    checkpoint_blocks: bool = False
    """Recompute the transformer blocks' activations in the backward pass instead of keeping them:
    less memory (SDXL at 1024²) for about one more forward through the blocks."""
    recompute_context: Callable[[], contextlib.AbstractContextManager] | None = None
    """Entered around each recomputation: what `apply` sets up around the UNet beyond autocast."""

    def capture(self, *, backward: bool) -> AttentionCapture:
        """A capture of this UNet's maps as InitNO reads them; for passes with a backward, with the
        activation checkpointing chosen for them (forward-only passes keep nothing to recompute)."""
        for_backward = {"checkpoint_blocks": self.checkpoint_blocks, "recompute_context": self.recompute_context}
        return AttentionCapture(
            self.unet,
            downsample=self.downsample,
            context_transform=self.context_transform,
            **(for_backward if backward else {}),
        )


@dataclass
class ImageRequest:
    """One image: its initial noise (C, H, W), its seed, its conditioning (batch of 1) and its subjects
    as lists of context positions (`chunk * 77 + j`). `softmax_positions`, when given, are the context
    positions the token softmax runs over (default: every chunk's slots but its first and last)."""

    noise: torch.Tensor
    seed: int
    cond: Any
    subjects: Sequence[Sequence[int]]
    softmax_positions: Sequence[int] | None = None


@dataclass(frozen=True)
class StepRecord:
    round: int
    step: int
    fallback: bool
    scores: Scores


@dataclass(frozen=True)
class AttentionSnapshot:
    """The maps the scores were read from, detached on the CPU: per subject the smoothed cross-attention
    map and the smoothed self-attention row at its peak (N, h, w), and the peaks (flat indices)."""

    cross: torch.Tensor
    self_attention: torch.Tensor
    peaks: torch.Tensor

    @classmethod
    def of(cls, evaluation: Evaluation) -> AttentionSnapshot:
        return cls(evaluation.cross_maps.cpu(), evaluation.self_maps.cpu(), evaluation.peaks.cpu())


@dataclass
class ImageResult:
    """The optimised latent of one image and what explains it."""

    latent: torch.Tensor
    valid: bool
    rounds: int
    steps: int
    fallback: bool
    cancelled: bool
    initial: Scores | None
    final: Scores | None
    maps_before: AttentionSnapshot | None
    maps_after: AttentionSnapshot | None
    trace: list[StepRecord] = field(default_factory=list)
    kl: float = 0.0
    """Mean KL of the returned noise's distribution N(mu, exp(log_var)) to N(0, I)."""


@dataclass
class _RunState:
    """A run's state before the pass of step `step`: enough to continue it exactly.

    The fallback re-runs the best round from its start noise with a fresh optimiser (as officially), so its
    first steps repeat that round's bit for bit; it continues from the round's last step instead."""

    step: int
    log_var: torch.Tensor
    mu: torch.Tensor
    optimizer: dict


@dataclass
class _Candidate:
    """The outcome of one run (`fn_initno`): the noise it started from and the last scored latent."""

    round: int
    start_noise: torch.Tensor
    latent: torch.Tensor
    scores: Scores
    snapshot: AttentionSnapshot
    valid: bool
    kl: float
    last_state: _RunState | None = None


def batch_conds(conds: Sequence[Any]) -> Any:
    """Per-image conditionings (batch of 1 each) as one batch: tensors, or dicts key by key (SDXL's
    `crossattn` and `vector`)."""
    if isinstance(conds[0], dict):
        return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
    return torch.cat([c.expand(1, *c.shape[1:]) if c.shape[0] != 1 else c for c in conds])


class BatchScorer:
    """Scores a batch of latents in one UNet call, each with its own conditioning and subjects."""

    def __init__(self, denoiser: Denoiser, capture: AttentionCapture):
        self.denoiser = denoiser
        self.capture = capture

    def __call__(self, latents: torch.Tensor, conds: Sequence[Any], subjects, positions) -> list[Evaluation]:
        count = latents.shape[0]
        timesteps = torch.full((count,), float(self.denoiser.timestep), device=latents.device)
        self.capture.run(self.denoiser.apply, latents, timesteps, batch_conds(conds))
        cross = self.capture.cross_attention(count)
        evaluations = [
            evaluate_attention(
                cross[i],
                lambda peaks, i=i: self.capture.self_attention_rows(peaks, image=i, batch_size=count)[0],
                subjects[i],
                positions[i],
            )
            for i in range(count)
        ]
        self.capture.clear()
        return evaluations

    def score(self, latents: torch.Tensor, requests: Sequence[ImageRequest]) -> list[Evaluation]:
        """`latents[i]` with the conditioning and subjects of `requests[i]`."""
        return self(latents, [r.cond for r in requests], [r.subjects for r in requests],
                    [r.softmax_positions for r in requests])  # fmt: skip


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Turns off `requires_grad` on every parameter meanwhile, so the backward pass never computes (or
    keeps activations for) weight gradients; restores each flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def shrink_into_kl_ball(log_var: torch.Tensor, mu: torch.Tensor, bound: float, iterations: int = 40) -> None:
    """Scales (log_var, mu) towards 0 in place until their KL is within `bound` (it grows with the scale)."""
    with torch.no_grad():
        if kl_divergence(log_var, mu) <= bound:
            return
        low, high = 0.0, 1.0
        for _ in range(iterations):
            middle = (low + high) / 2
            if kl_divergence(log_var * middle, mu * middle) <= bound:
                low = middle
            else:
                high = middle
        log_var.mul_(low)
        mu.mul_(low)


@dataclass
class _Pass:
    """What an image's optimisation asks of the UNet next: score `latent` (with its graph if it needs
    gradients). The answer is its `Evaluation`."""

    latent: torch.Tensor


@dataclass
class _Gradients:
    """What it asks after a pass: the gradients of `loss` with respect to `tensors`."""

    loss: torch.Tensor
    tensors: tuple[torch.Tensor, ...]


_Result = TypeVar("_Result")
_Asking = Generator[_Pass | _Gradients, Any, _Result]
"""An optimisation under way: it yields what it needs computed, is sent the answers, returns its result."""


class _ImageOptimiser:
    """Optimises one image; the state it needs (request, progress, cancel) is bound once.

    `optimise()` is a generator: it yields each UNet pass (`_Pass`) and each backward pass (`_Gradients`) it
    needs and is sent their answers, so that `optimize_noise` can run the passes of several images in one
    batch while each image follows its own rounds, early stop and fallback exactly."""

    def __init__(self, request, params, index, progress, cancel):
        self.request = request
        self.params = params
        self.index = index
        self.progress = progress
        self.cancel = cancel
        self.trace: list[StepRecord] = []
        self.first: AttentionSnapshot | None = None
        self.best: _Candidate | None = None
        self.cancelled = False

    def run(
        self,
        start_noise: torch.Tensor,
        max_steps: int,
        round_index: int,
        fallback: bool,
        resume: _RunState | None = None,
    ) -> _Asking[_Candidate | None]:
        """One official `fn_initno` run (continued from `resume` if given); a generator returning its
        `_Candidate`, None if cancelled before its first pass."""
        p = self.params
        log_var = torch.zeros_like(start_noise) if resume is None else resume.log_var.clone()
        mu = torch.zeros_like(start_noise) if resume is None else resume.mu.clone()
        log_var.requires_grad_(True)
        mu.requires_grad_(True)
        optimizer = torch.optim.Adam([log_var, mu], lr=p.learning_rate, eps=p.adam_eps)
        if resume is not None:
            optimizer.load_state_dict(copy.deepcopy(resume.optimizer))
        candidate, state = None, None
        for step in range(0 if resume is None else resume.step, max_steps):
            if self.cancel():
                self.cancelled = True
                break
            last_step = step == max_steps - 1
            if last_step and not fallback and step < p.fallback_steps:  # a fallback could continue from here
                state = _RunState(
                    step, log_var.detach().clone(), mu.detach().clone(), copy.deepcopy(optimizer.state_dict())
                )
            # Fix: the last pass of a run is never followed by an update, so the latent returned is
            # the one that was scored (the official code returns one more, unscored, Adam step). That
            # pass needs no backward, hence no graph.
            with torch.set_grad_enabled(not last_step):
                latent = start_noise * torch.exp(0.5 * log_var) + mu
            evaluation = yield _Pass(latent)
            scores = evaluation.scores
            valid = scores.is_valid(p.cross_threshold, p.conflict_threshold)
            kl = float(kl_divergence(log_var.detach(), mu.detach()))
            snapshot = AttentionSnapshot.of(evaluation)
            candidate = _Candidate(round_index, start_noise, latent.detach(), scores, snapshot, valid, kl, state)
            self._record(candidate, step, fallback)
            if valid or last_step:
                break
            # Tested before the update, as in the official code: a valid noise is returned unchanged.
            grads = yield _Gradients(evaluation.joint, (log_var, mu))
            del evaluation
            self._adam_step(optimizer, [log_var, mu], grads)
            self._project(optimizer, log_var, mu)
        return candidate

    def _record(self, candidate: _Candidate, step: int, fallback: bool) -> None:
        if self.first is None:
            self.first = candidate.snapshot
        if self.best is None or candidate.scores.rank < self.best.scores.rank:
            self.best = candidate
        self.trace.append(StepRecord(candidate.round, step, fallback, candidate.scores))
        self.progress(self.index, candidate.round, step, candidate.scores)

    @staticmethod
    def _adam_step(optimizer, tensors, grads) -> None:
        for tensor, grad in zip(tensors, grads):
            tensor.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _project(self, optimizer, log_var, mu) -> None:
        """Adam steps on the KL alone, sharing the optimiser's moments, until KL <= bound (docs/method.md)."""
        bound = self.params.kl_bound
        # Fix: bounded (the official `while` loop can spin without end); a scale-back guarantees the
        # bound if the steps run out.
        for _ in range(self.params.kl_max_steps):
            with torch.no_grad():
                if kl_divergence(log_var, mu) <= bound:
                    return
            self._adam_step(optimizer, [log_var, mu], kl_gradients(log_var, mu))
        shrink_into_kl_ball(log_var, mu, bound)

    def optimise(self) -> _Asking[ImageResult]:
        """A generator returning the `ImageResult` (see the class)."""
        p = self.params
        noise = self.request.noise.detach().float()
        restarts = _RestartNoise(self.request.seed, noise)
        rounds: list[_Candidate] = []
        for round_index in range(p.max_rounds):
            start = noise if round_index == 0 else restarts.draw()
            candidate = yield from self.run(start, p.steps_per_round, round_index, fallback=False)
            if candidate is not None:
                rounds.append(candidate)
            if self.cancelled or (candidate is not None and candidate.valid):
                break
        chosen = next((c for c in rounds if c.valid), None)
        fallback = False
        if chosen is None and rounds and not self.cancelled:
            # Fix: only reached when no round succeeded; the official sort could rank a failed round
            # above the successful one and throw the success away (docs/method.md: Rounds and fallback).
            best_round = min(rounds, key=lambda c: (c.scores.rank, c.round))
            if p.fallback_steps > 0:
                fallback = True
                # No state when the fallback would end inside the round: it re-runs as the official code.
                resume = best_round.last_state
                chosen = yield from self.run(
                    best_round.start_noise, p.fallback_steps, p.max_rounds, fallback=True, resume=resume
                )
            chosen = chosen or best_round
        if self.cancelled:
            chosen = self.best
        if chosen is None:
            return ImageResult(noise, False, 0, 0, False, self.cancelled, None, None, None, None, self.trace)
        return ImageResult(
            latent=chosen.latent,
            valid=chosen.valid,
            rounds=len(rounds),
            steps=len(self.trace),
            fallback=fallback,
            cancelled=self.cancelled,
            initial=self.trace[0].scores,
            final=chosen.scores,
            maps_before=self.first,
            maps_after=chosen.snapshot,
            trace=self.trace,
            kl=chosen.kl,
        )


class _RestartNoise:
    """Fresh noise for rounds after the first: sequential draws of a CPU generator seeded with the
    image's seed, after the draw that A1111's CPU RNG used for the image itself (as the official code
    draws restarts from the user's seeded generator). Independent of batch neighbours and of `p.rng`."""

    def __init__(self, seed: int, like: torch.Tensor):
        self.like = like
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.draw()

    def draw(self) -> torch.Tensor:
        noise = torch.randn(self.like.shape, generator=self.generator, dtype=torch.float32)
        return noise.to(device=self.like.device)


def optimize_noise(
    denoiser: Denoiser,
    requests: Sequence[ImageRequest],
    params: InitNOParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 1,
) -> list[ImageResult]:
    """Optimises the initial noise of each image and returns one `ImageResult` per request.

    Each image follows its own rounds, early stop and fallback. With `batch_size` 1 (the WebUI's) images
    run one at a time, so an image's result never depends on its neighbours; larger batches share UNet
    passes among up to that many images (a finished image's place goes to the next), which changes results
    only within float tolerance (the eval's batches).

    `cancel()` is checked before every UNet pass; once it returns True the remaining work stops and
    each unfinished image gets the best latent found so far (its own noise if none was scored).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    params = params or InitNOParams()
    progress = progress or (lambda *_: None)
    cancel = cancel or (lambda: False)
    capture = denoiser.capture(backward=True)
    scorer = BatchScorer(denoiser, capture)
    results: dict[int, ImageResult] = {}
    waiting = iter(enumerate(requests))
    asks: dict[int, tuple[_Asking, _Pass]] = {}  # image index -> (its optimisation, the pass it waits for)

    def answer(index: int, work, reply) -> None:
        """Sends `reply` to image `index` and files the pass it asks for next (gradients are asked for
        only right after a pass)."""
        asked = _send(work, reply, results, index)
        if asked is not None:
            asks[index] = (work, asked)

    with frozen_parameters(denoiser.unet), capture, torch.enable_grad():
        while True:
            while len(asks) < batch_size:
                index, request = next(waiting, (None, None))
                if request is None:
                    break
                answer(index, _ImageOptimiser(request, params, index, progress, cancel).optimise(), None)
            if not asks:
                break
            batch = sorted(asks.items())
            asks.clear()
            latents = [asked.latent for _, (_, asked) in batch]
            chosen = [requests[index] for index, _ in batch]
            with torch.set_grad_enabled(any(latent.requires_grad for latent in latents)):
                evaluations = scorer.score(torch.stack(latents), chosen)
            backward = []
            for (index, (work, _)), evaluation in zip(batch, evaluations):
                asked = _send(work, evaluation, results, index)
                if isinstance(asked, _Gradients):
                    backward.append((index, work, asked))
                elif asked is not None:
                    asks[index] = (work, asked)
            del evaluations
            if backward:
                # One backward for the batch: images share no computation, so each image's gradients of
                # the summed losses are those of its own loss.
                total = backward[0][2].loss
                for _, _, asked in backward[1:]:
                    total = total + asked.loss
                tensors = [t for _, _, asked in backward for t in asked.tensors]
                grads = iter(torch.autograd.grad(total, tensors))
                for index, work, asked in backward:
                    answer(index, work, tuple(next(grads) for _ in asked.tensors))
    return [results[index] for index in range(len(requests))]


def _send(work: _Asking, reply, results: dict, index: int) -> _Pass | _Gradients | None:
    """What image `index`'s optimisation asks for next after `reply`; None once it is done (its result
    then is in `results`)."""
    try:
        return work.send(reply)
    except StopIteration as done:
        results[index] = done.value
        return None
