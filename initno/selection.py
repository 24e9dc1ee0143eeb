"""Selection-first InitNO: score candidate noises with forward passes only and keep the best.

- `select_by_lookahead` (the WebUI's Fast, the default method): the candidates are scored a few sampling
  steps ahead, where the layout has begun to form, and the chosen candidate's initial noise is returned;
- `select_and_polish` (the early study's method, `eval`'s `select`): scored as they are, then the best
  polished with InitNO's own Adam steps on (shift, log-variance) only while its scores still improve.

Why: on every model measured here most of InitNO's gain comes from choosing among noises by the model's
own attention, not from optimising one (docs/evaluation.md); the official valid region (cross < 0.2,
conflict < 0.3, tuned on SD1.4) is out of reach on other models, so the official loop always pays its
worst case of 91 passes. Here the work is batched (candidates and images share UNet calls) and bounded by
`SelectionParams.max_passes`.

The pieces are the official ones: the scores of `initno.scores`, the update of `initno.optimize` (Adam,
lr 1e-2, eps 1e-3, then Adam steps on the KL alone until KL ≤ 1e-3), only batched with a per-image
Adam so that each image's steps are exactly those it would take alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .optimize import BatchScorer, Denoiser, ImageRequest, frozen_parameters, shrink_into_kl_ball
from .params import InitNOParams
from .scores import Evaluation, conflict_loss, kl_gradients, kl_terms


@dataclass(frozen=True)
class Thresholds:
    """Where a noise counts as good enough to stop: response loss below `cross` and (ungated) conflict
    below `conflict`. `source` says where the numbers came from, for the infotext."""

    cross: float
    conflict: float
    source: str = "official"

    def reached(self, cross: float, conflict: float) -> bool:
        return cross < self.cross and conflict < self.conflict


OFFICIAL_THRESHOLDS = Thresholds(0.2, 0.3, "official")


def _require_whole_numbers(params, kind: str, minimums: dict[str, int]) -> None:
    for name, low in minimums.items():
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{kind} parameter {name!r} must be a whole number ≥ {low}, got {value!r}")


@dataclass(frozen=True)
class SelectionParams:
    candidates: int = 8
    """Noises scored before choosing: the seed's own and the restarts InitNO would draw."""
    polish_steps: int = 8
    """At most this many Adam steps on the chosen noise (each one UNet pass with its backward)."""
    patience: int = 2
    """Polishing stops after this many steps without a better score."""

    def __post_init__(self):
        _require_whole_numbers(self, "selection", {"candidates": 1, "polish_steps": 0, "patience": 1})

    @property
    def max_passes(self) -> int:
        """Candidates scored, then the polish steps and a last pass that scores the final step's result."""
        return self.candidates + (self.polish_steps + 1 if self.polish_steps else 0)


@dataclass(frozen=True)
class NoiseScores:
    """One noise's scores: the response loss, the self-attention conflict without the official gate (it is
    switched off while cross > 0.5; a ranking must see it always) and the clean loss."""

    cross: float
    conflict: float
    clean: float

    def rank(self, thresholds: Thresholds) -> float:
        """Lower is better: each score in units of its threshold, summed, so that the two axes weigh the
        same on any model once the thresholds are calibrated to it."""
        return self.cross / thresholds.cross + self.conflict / thresholds.conflict

    @property
    def total(self) -> float:
        """Lower is better: the two scores summed, unweighted (lookahead's ranking; it needs no thresholds)."""
        return self.cross + self.conflict

    @classmethod
    def of(cls, evaluation: Evaluation) -> NoiseScores:
        conflict = float(conflict_loss(evaluation.self_maps))
        return cls(evaluation.scores.cross, conflict, evaluation.scores.clean)


@dataclass
class SelectionResult:
    latent: torch.Tensor
    chosen: int
    """Which candidate was chosen: 0 is the seed's own noise."""
    candidates: list[NoiseScores]
    final: NoiseScores
    passes: int
    polish_steps: int
    reached: bool
    kl: float = 0.0
    trace: list[NoiseScores] = field(default_factory=list)
    """The chosen noise's scores at each polish pass (the first is its candidate score)."""


def candidate_noises(noise: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """(count, C, H, W): the seed's noise, then the restarts InitNO draws for that seed (the draws of a CPU
    generator seeded with it, after the one the image used), as `initno.optimize` does."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    draws = torch.randn((count, *noise.shape), generator=generator, dtype=torch.float32)
    draws[0] = noise.detach().float().cpu()
    return draws.to(noise.device)


class _BatchAdam:
    """Adam over a batch of images with a step count per image, as `torch.optim.Adam` steps one image's
    (log_var, mu): the same moments, bias corrections and epsilon, applied where `mask` is set."""

    def __init__(self, like: torch.Tensor, lr: float, eps: float, betas=(0.9, 0.999)):
        self.lr, self.eps, self.betas = lr, eps, betas
        self.moments = [[torch.zeros_like(like), torch.zeros_like(like)] for _ in range(2)]
        self.steps = torch.zeros(like.shape[0], dtype=torch.int64)

    def step(self, tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += mask.long()
        shape = (-1,) + (1,) * (tensors[0].dim() - 1)
        steps = self.steps.double().clamp_min(1)
        correction1 = (1 - beta1**steps).to(tensors[0].dtype).view(shape).to(tensors[0].device)
        correction2 = (1 - beta2**steps).sqrt().to(tensors[0].dtype).view(shape).to(tensors[0].device)
        where = mask.view(shape).to(tensors[0].device)
        with torch.no_grad():
            for tensor, grad, (mean, square) in zip(tensors, grads, self.moments):
                mean.copy_(torch.where(where, beta1 * mean + (1 - beta1) * grad, mean))
                square.copy_(torch.where(where, beta2 * square + (1 - beta2) * grad * grad, square))
                update = (self.lr / correction1) * mean / (square.sqrt() / correction2 + self.eps)
                tensor.copy_(torch.where(where, tensor - update, tensor))


def _project(adam: _BatchAdam, log_var, mu, params: InitNOParams, active: torch.Tensor) -> None:
    """Per image, Adam steps on its KL alone until it is within the bound (`optimize._project`, batched)."""
    count = log_var[0].numel()
    for _ in range(params.kl_max_steps):
        with torch.no_grad():
            outside = active & (kl_terms(log_var, mu).flatten(1).mean(dim=1) > params.kl_bound).cpu()
        if not outside.any():
            return
        grads = kl_gradients(log_var, mu, count)
        adam.step([log_var, mu], grads, outside)
    for i in torch.nonzero(active).flatten().tolist():
        shrink_into_kl_ball(log_var[i], mu[i], params.kl_bound)


def _score_candidates(
    requests: Sequence[ImageRequest],
    count: int,
    batch_size: int,
    score: Callable[[torch.Tensor, list[int]], list[Evaluation]],
) -> tuple[list[list[torch.Tensor]], list[list[NoiseScores]]]:
    """Each request's `count` candidate noises and their scores; `score(latents, owners)` evaluates up to
    `batch_size` latents in one UNet call (`owners`: each latent's request)."""
    candidates = [candidate_noises(r.noise, r.seed, count) for r in requests]
    jobs = [(i, j) for i in range(len(requests)) for j in range(count)]
    scores: list[list[NoiseScores]] = [[] for _ in requests]
    with torch.no_grad():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            latents = torch.stack([candidates[i][j] for i, j in chunk])
            for (i, _), evaluation in zip(chunk, score(latents, [i for i, _ in chunk])):
                scores[i].append(NoiseScores.of(evaluation))
    return candidates, scores


def select_and_polish(
    denoiser: Denoiser,
    requests: Sequence[ImageRequest],
    selection: SelectionParams | None = None,
    thresholds: Thresholds = OFFICIAL_THRESHOLDS,
    params: InitNOParams | None = None,
    *,
    batch_size: int = 8,
    cancel: Callable[[], bool] | None = None,
) -> list[SelectionResult]:
    """Selection-first InitNO for each request; `batch_size` latents share a UNet call. An image's result
    does not depend on its batch neighbours (up to float rounding)."""
    selection = selection or SelectionParams()
    params = params or InitNOParams()
    cancel = cancel or (lambda: False)
    capture = denoiser.capture(backward=False)
    scorer = BatchScorer(denoiser, capture)
    with frozen_parameters(denoiser.unet), capture:

        def score_now(latents: torch.Tensor, owners: list[int]) -> list[Evaluation]:
            return scorer.score(latents, [requests[i] for i in owners])

        candidates, scores = _score_candidates(requests, selection.candidates, batch_size, score_now)
        chosen = [min(range(len(s)), key=lambda j, s=s: (s[j].rank(thresholds), j)) for s in scores]
        results = [
            SelectionResult(
                latent=candidates[i][chosen[i]].reshape(r.noise.shape).to(r.noise.dtype),
                chosen=chosen[i],
                candidates=scores[i],
                final=scores[i][chosen[i]],
                passes=selection.candidates,
                polish_steps=0,
                reached=thresholds.reached(scores[i][chosen[i]].cross, scores[i][chosen[i]].conflict),
                trace=[scores[i][chosen[i]]],
            )
            for i, r in enumerate(requests)
        ]
        todo = [i for i, result in enumerate(results) if not result.reached]
        if selection.polish_steps and todo and not cancel():
            for first in range(0, len(todo), batch_size):
                _polish(scorer, requests, results, todo[first : first + batch_size], candidates, chosen,
                        selection, thresholds, params, cancel)  # fmt: skip
    return results


def _polish(scorer, requests, results, indices, candidates, chosen, selection, thresholds, params, cancel) -> None:
    """Adam steps on the chosen noises of `indices`, each image stopping when its thresholds are reached or
    its rank has not improved for `patience` steps; each keeps the best-ranked latent it scored.

    The first pass repeats the candidate's (that one ran without a graph, to score many noises cheaply);
    the last pass only scores the last step's result, so it runs without one."""
    start = torch.stack([candidates[i][chosen[i]] for i in indices])
    log_var = torch.zeros_like(start, requires_grad=True)
    mu = torch.zeros_like(start, requires_grad=True)
    adam = _BatchAdam(start, params.learning_rate, params.adam_eps)
    active = torch.ones(len(indices), dtype=torch.bool)
    best = [results[i].final.rank(thresholds) for i in indices]
    stale = [0] * len(indices)
    for step in range(selection.polish_steps + 1):
        if cancel():
            return
        last = step == selection.polish_steps
        rows = torch.nonzero(active).flatten().tolist()
        with torch.set_grad_enabled(not last):
            latent = start * torch.exp(0.5 * log_var) + mu
            evaluations = scorer.score(latent[rows], [requests[indices[r]] for r in rows])
        for row, evaluation in zip(rows, evaluations):
            result = results[indices[row]]
            result.passes += 1
            if step == 0:
                continue
            noise_scores = NoiseScores.of(evaluation)
            result.trace.append(noise_scores)
            rank = noise_scores.rank(thresholds)
            if rank < best[row]:
                best[row], stale[row] = rank, 0
                result.latent = latent[row].detach().reshape(result.latent.shape).to(result.latent.dtype)
                result.final, result.polish_steps = noise_scores, step
                result.kl = float(kl_terms(log_var[row], mu[row]).mean().detach())
                result.reached = thresholds.reached(noise_scores.cross, noise_scores.conflict)
            else:
                stale[row] += 1
            if result.reached or stale[row] >= selection.patience:
                active[row] = False
        if last or not active.any():
            return
        joint = sum(e.joint for row, e in zip(rows, evaluations) if active[row])
        grads = torch.autograd.grad(joint, [log_var, mu], allow_unused=True)
        del evaluations
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (log_var, mu))]
        adam.step([log_var, mu], grads, active)
        _project(adam, log_var, mu, params, active)


Advance = Callable[[torch.Tensor, Sequence[Any], int], tuple[torch.Tensor, float]]
"""(latents (B, C, H, W), their conditionings, k) -> the latents after the sampler's first k steps, and the
timestep they are at: the host's sampler (with its classifier-free guidance), run a few steps ahead."""


@dataclass(frozen=True)
class LookaheadParams:
    candidates: int = 4
    """Noises sampled a few steps ahead: the seed's own and the restarts InitNO draws."""
    steps: int = 2
    """Sampling steps before the candidates are scored. 4 × 2 (20 passes) was the best setting within 30
    passes on the miniature's study split (docs/selection-study.md); more candidates or steps plateau.
    0 scores the noises themselves, as InitNO's first pass does: one pass a candidate."""
    passes_per_step: int = 2
    """UNet passes per sampling step (2 with classifier-free guidance)."""

    def __post_init__(self):
        _require_whole_numbers(self, "lookahead", {"candidates": 1, "steps": 0, "passes_per_step": 1})

    @property
    def passes(self) -> int:
        """Forward passes only: each candidate's steps and its scoring pass."""
        return self.candidates * (self.steps * self.passes_per_step + 1)


def select_by_lookahead(
    denoiser: Denoiser,
    advance: Advance,
    requests: Sequence[ImageRequest],
    lookahead: LookaheadParams | None = None,
    *,
    batch_size: int = 32,
) -> list[SelectionResult]:
    """Chooses each image's initial noise by its attention after a few sampling steps, when the layout has
    begun to form: on the miniature InitNO's scores of the noise itself barely predict the image (AUC about
    0.52-0.55, docs/evaluation.md), those after 4-10 steps do better. The noise returned is the chosen
    candidate's *initial* noise; the sampler then runs from it as usual. Forward passes only. With 0 steps
    ahead `advance` is not called: the noises are scored as they are, at the denoiser's timestep. The
    candidate with the lowest `NoiseScores.total` is chosen, the earliest on a tie (0: the seed's own)."""
    lookahead = lookahead or LookaheadParams()
    capture = denoiser.capture(backward=False)

    def score_ahead(latents: torch.Tensor, owners: list[int]) -> list[Evaluation]:
        chosen = [requests[i] for i in owners]
        if lookahead.steps:
            ahead, timestep = advance(latents, [r.cond for r in chosen], lookahead.steps)
        else:  # the noises themselves, where InitNO scores them (the sampler's first timestep)
            ahead, timestep = latents, denoiser.timestep
        scorer = BatchScorer(dataclasses.replace(denoiser, timestep=timestep), capture)
        with frozen_parameters(denoiser.unet), capture:
            return scorer.score(ahead, chosen)

    candidates, scores = _score_candidates(requests, lookahead.candidates, batch_size, score_ahead)
    results = []
    for i, request in enumerate(requests):
        chosen = min(range(lookahead.candidates), key=lambda j, s=scores[i]: (s[j].total, j))
        results.append(
            SelectionResult(
                latent=candidates[i][chosen].reshape(request.noise.shape).to(request.noise.dtype),
                chosen=chosen,
                candidates=scores[i],
                final=scores[i][chosen],
                passes=lookahead.passes,
                polish_steps=0,
                reached=False,
                trace=[scores[i][chosen]],
            )
        )
    return results
