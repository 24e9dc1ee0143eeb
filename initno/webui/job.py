"""One generation's InitNO work: for each first-pass txt2img batch, optimise each image's noise in place
and/or (InitNO+, Attend-and-Excite) guide each image's latent during the sampler's first steps; report
progress, honour Interrupt/Skip, turn every fault into a clear "skipped" with the image still generated,
and keep the per-image outcome for the infotext.

The guidance hooks live on the batch's sampler (`sampler_hook.SamplerGuidance`) and are taken off in
`post_sample`; if sampling ends in an exception the host skips `post_sample`, so they are also taken off
at the next batch's hook and at `postprocess` (the sampler object, which carries them, is dropped by the
host anyway; the attention capture and the frozen parameters never outlive one guidance step).

The job lives on `p` (`p._initno_job`), so nothing carries over between generations, and X/Y/Z cells
(shallow copies of `p`) each get their own.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from modules import devices, images, shared

from ..diagnostics import diagnostic_image
from ..guidance import METHOD_NAMES, GuidancePlan, ImageGuidance
from ..optimize import ImageRequest, ImageResult, optimize_noise
from ..scores import Scores
from ..subjects import Subject, choose_subjects, require_subjects
from . import host
from .args import ScriptArgs
from .sampler_hook import SamplerGuidance, refusal

ATTRIBUTE = "_initno_job"


@dataclass
class ImageOutcome:
    """What the infotext says about one image."""

    status: str
    subjects: list[Subject] = field(default_factory=list)
    result: ImageResult | None = None
    guide: ImageGuidance | None = None
    guidance_stop: str | None = None
    """Why the sampling guidance did not run, or stopped early."""

    @property
    def guidance(self) -> str | None:
        """E.g. "InitNO+, 10 steps, refined 2× (9 updates), 19 passes, cross 0.612 -> 0.104"."""
        guided = self.guide is not None and bool(self.guide.trace.steps)
        if self.guidance_stop is None:
            return self.guide.trace.summary() if self.guide is not None else None
        if not guided:
            return f"skipped: {self.guidance_stop}"
        return f"{self.guide.trace.summary()}; then stopped: {self.guidance_stop}"

    @property
    def scores(self) -> str | None:
        if self.result is None or self.result.initial is None:
            return None
        before, after = self.result.initial, self.result.final
        return (
            f"cross {before.cross:.3f} -> {after.cross:.3f}, self {before.conflict:.3f} -> {after.conflict:.3f}, "
            f"joint {before.joint:.3f} -> {after.joint:.3f}"
        )

    @property
    def tokens(self) -> str | None:
        if not self.subjects:
            return None
        auto = " (auto)" if any(s.auto for s in self.subjects) else ""
        return "; ".join(f"{s.text} {' '.join(map(str, s.positions))}" for s in self.subjects) + auto


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _status(result: ImageResult) -> str:
    if result.cancelled:
        return f"interrupted after {_count(result.steps, 'step')}"
    rounds = _count(result.rounds, "round") + (" + fallback" if result.fallback else "")
    reached = "valid" if result.valid else "not valid"
    return f"{reached}, {rounds}, {_count(result.steps, 'step')}"


OUTCOME_KEYS = {
    "InitNO": lambda outcome: outcome.status,
    "InitNO tokens": lambda outcome: outcome.tokens,
    "InitNO scores": lambda outcome: outcome.scores,
    "InitNO guidance": lambda outcome: outcome.guidance,
}
"""The per-image infotext entries and how each is read from an image's outcome."""

GUIDANCE_ONLY = "sampling guidance only"
"""The noise outcome of Attend-and-Excite, which leaves the noise as it is."""


class InitNOJob:
    def __init__(self, args: ScriptArgs):
        self.args = args
        self.outcomes: dict[int, ImageOutcome] = {}
        self.sampler_guidance: SamplerGuidance | None = None

    # -- infotext --------------------------------------------------------------------------------------

    @property
    def outcome_keys(self) -> list[str]:
        """The per-image entries that apply to the method, in infotext order."""
        keys = ["InitNO", "InitNO tokens"]
        keys += ["InitNO scores"] if self.args.optimises_noise else []
        keys += ["InitNO guidance"] if self.args.guidance is not None else []
        return keys

    def write_infotext(self, p) -> None:
        """Every parameter now; the per-image outcome as callables the host evaluates per image."""
        params = own_generation_params(p)
        params["InitNO"] = self._per_image(OUTCOME_KEYS["InitNO"])
        params.update(self.args.infotext())
        for key in self.outcome_keys[1:]:
            params[key] = self._per_image(OUTCOME_KEYS[key])

    def _per_image(self, read):
        def value(p, index, **kwargs):
            # The host passes the index within the batch (create_infotext's `index`).
            outcome = self.outcomes.get(p.iteration * p.batch_size + index)
            return read(outcome) if outcome is not None else None

        return value

    def finish(self, p, processed) -> None:
        """After the last batch: the outcomes as per-image lists (indexed like `all_seeds`), so that the
        API's `info` shows them (callables serialise as null) and later infotexts still find them."""
        self.end_guidance()
        count = len(p.all_prompts)
        for key in self.outcome_keys:
            processed.extra_generation_params[key] = [
                OUTCOME_KEYS[key](self.outcomes[i]) if i in self.outcomes else None for i in range(count)
            ]
        self.add_diagnostics(p, processed)

    # -- the sampling hook -----------------------------------------------------------------------------

    def run_batch(self, p, x: torch.Tensor) -> None:
        """Replaces the batch's initial noise `x` (B, C, H, W) in place with the optimised noise, and/or
        puts the sampling guidance on the batch's sampler."""
        self.end_guidance()  # a previous batch's, if its sampling ended in an exception
        first = p.iteration * p.batch_size
        indices = [first + i for i in range(x.shape[0])]
        try:
            self._run_batch(p, x, first)
        except host.Unsupported as error:
            self._skip(p, indices, str(error))
        except torch.cuda.OutOfMemoryError:
            self._skip(p, indices, "out of memory; try a smaller image, fewer subjects or --medvram")
        except FloatingPointError as error:
            self._skip(p, indices, f"{error}; try --no-half or 'Upcast cross attention layer to float32'")
        except Exception as error:  # the WebUI never fails because of InitNO: the image generates without it
            traceback.print_exc()
            self._skip(p, indices, f"internal error: {type(error).__name__}: {error}")
        finally:
            shared.state.textinfo = None
            devices.torch_gc()

    def _run_batch(self, p, x: torch.Tensor, first: int) -> None:
        denoiser = host.denoiser(p)
        requests, positions = [], []
        for i in range(x.shape[0]):
            index = first + i
            try:
                with torch.inference_mode(False):  # normal tensors, even where the host samples in inference mode
                    subjects, request = self._request(p, i, x[i])
            except ValueError as error:  # SubjectError among them: this image is skipped, the others run
                self._skip(p, [index], str(error))
                continue
            self.outcomes[index] = ImageOutcome("pending" if self.args.optimises_noise else GUIDANCE_ONLY, subjects)
            requests.append(request)
            positions.append(i)
        if not requests:
            return
        if self.args.optimises_noise:
            denoiser = self._optimise_batch(p, x, first, denoiser, requests, positions)
        if self.args.guidance is not None:
            try:
                self._start_guidance(p, x.shape[0], first, denoiser, requests, positions)
            except Exception as error:  # the noise is optimised already: only the guidance is skipped
                self._guidance_fault(p, [first + i for i in positions], error)

    def _optimise_batch(self, p, x, first: int, denoiser, requests: list[ImageRequest], positions: list[int]):
        """Optimises the noise of the batch's images in place; returns the denoiser that managed it."""
        results = None
        with host.prepared(p, x):
            try:
                results = self._optimise(p, denoiser, requests)
            except torch.cuda.OutOfMemoryError:
                if denoiser.checkpoint_blocks or not host.checkpointing_automatic():
                    raise
            if results is None:  # outside the `except`, whose traceback would hold the failed pass's memory
                # Automatic misjudged the free memory (e.g. --medvram moves the UNet in only when it runs):
                # once more, checkpointed.
                devices.torch_gc()
                denoiser = replace(denoiser, checkpoint_blocks=True)
                results = self._optimise(p, denoiser, requests)
        for i, result in zip(positions, results):
            x[i].copy_(result.latent.to(dtype=x.dtype, device=x.device))
            outcome = self.outcomes[first + i]
            outcome.result, outcome.status = result, _status(result)
            print(f"InitNO: image {first + i + 1}: {outcome.status}; {outcome.scores}")
        # Forge-family hosts sample from `p.modified_noise` when it is set (A1111 ignores it).
        p.modified_noise = x
        return denoiser

    # -- the sampling guidance ---------------------------------------------------------------------------

    def _start_guidance(self, p, batch: int, first: int, denoiser, requests, positions: list[int]) -> None:
        """Puts one `ImageGuidance` per image on the batch's sampler; it runs while the host samples."""
        indices = [first + i for i in positions]
        sampler_name = getattr(getattr(p.sampler, "config", None), "name", None) or p.sampler_name
        reason = refusal(sampler_name)
        if reason is not None:
            self._stop_guidance(p, indices, reason, skipped=True)
            return
        plan = self.args.guidance.plan(p.steps)
        progress = _GuidanceProgress(plan, len(requests))
        guides: list[ImageGuidance | None] = [None] * batch
        for n, (i, request) in enumerate(zip(positions, requests)):
            guides[i] = ImageGuidance(
                denoiser,
                request.cond,
                request.subjects,
                plan,
                softmax_positions=request.softmax_positions,
                progress=partial(progress, n),
                cancel=_cancelled,
            )
            self.outcomes[first + i].guide = guides[i]
        self.sampler_guidance = SamplerGuidance(
            p.sampler,
            guides,
            on_fault=partial(self._guidance_fault, p, indices),
            on_finished=_guidance_finished,
            around=partial(_guidance_pass, p, p.sd_model, denoiser.unet),
        ).install()

    def end_guidance(self) -> None:
        """Takes the guidance off the sampler (again: harmless). Guided steps left undone because the user
        stopped the sampling count as interrupted."""
        hook = self.sampler_guidance
        if hook is None:
            return
        if not hook.finished and _cancelled():
            for guide in hook.guides:
                if guide is not None:
                    guide.trace.cancelled = True
        hook.remove()
        self.sampler_guidance = None

    def _guidance_fault(self, p, indices: list[int], error: BaseException) -> None:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            reason = "out of memory; try a smaller image, fewer subjects or --medvram"
        elif isinstance(error, host.Unsupported):
            reason = str(error)
        elif isinstance(error, FloatingPointError):
            reason = f"{error}; try --no-half or 'Upcast cross attention layer to float32'"
        else:
            traceback.print_exception(error)
            reason = f"internal error: {type(error).__name__}: {error}"
        self._stop_guidance(p, indices, reason)

    def _stop_guidance(self, p, indices: list[int], reason: str, skipped: bool = False) -> None:
        for index in indices:
            self.outcomes[index].guidance_stop = reason
        comment(p, f"InitNO guidance {'skipped' if skipped else 'stopped'}: {reason}")

    def _optimise(self, p, denoiser, requests: list[ImageRequest]):
        progress = _Progress(self.args.params, len(requests))
        with host.differentiable_passes(p.sd_model, denoiser.unet):
            return optimize_noise(denoiser, requests, self.args.params, progress=progress, cancel=_cancelled)

    def _request(self, p, i: int, noise: torch.Tensor) -> tuple[list[Subject], ImageRequest]:
        prompt = host.read_prompt(p, i)
        subjects = choose_subjects(prompt.tokens, self.args.subjects, prompt.encode)
        require_subjects(prompt.tokens, subjects)
        cond = host.image_conditioning(p, i, prompt.part_lengths)
        positions = [list(s.positions) for s in subjects]
        softmax = host.softmax_positions(p.sd_model, prompt.tokens)
        request = ImageRequest(noise.detach().clone(), p.seeds[i], cond, positions, softmax)
        return subjects, request

    # -- diagnostics -------------------------------------------------------------------------------

    def add_diagnostics(self, p, processed) -> None:
        """Appends one diagnostic image per optimised or guided image after the generated ones (UI gallery
        and API response), saves each like the generated images, and lists their indices in `info`."""
        if not self.args.diagnostics:
            return
        added = []
        for index in sorted(self.outcomes):
            outcome = self.outcomes[index]
            labels = [s.text for s in outcome.subjects]
            trace = outcome.guide.trace if outcome.guide is not None else None
            image = diagnostic_image(outcome.result, labels, self.args.params, guidance=trace)
            if image is None:
                continue
            seed = p.all_seeds[index]
            text = f"InitNO diagnostics for image {index + 1} (seed {seed}): {outcome.status}"
            text += f"; {outcome.scores}" if outcome.scores else ""
            text += f"; guidance: {outcome.guidance}" if outcome.guidance else ""
            image.info["parameters"] = text
            added.append(len(processed.images))
            processed.images.append(image)
            processed.infotexts.append(text)
            if p.save_samples():
                images.save_image(
                    image,
                    p.outpath_samples,
                    "",
                    seed,
                    p.all_prompts[index],
                    shared.opts.samples_format,
                    info=text,
                    p=p,
                    suffix="-initno",
                )
        if added:
            processed.extra_generation_params["InitNO diagnostic images"] = added  # indices into `images`

    def _skip(self, p, indices: list[int], reason: str) -> None:
        for index in indices:
            previous = self.outcomes.get(index)
            outcome = ImageOutcome(f"skipped: {reason}", previous.subjects if previous else [])
            if self.args.guidance is not None:
                outcome.guidance_stop = reason
            self.outcomes[index] = outcome
        comment(p, f"InitNO skipped: {reason}")


def _cancelled() -> bool:
    return bool(shared.state.interrupted or shared.state.skipped)


class _Progress:
    """'InitNO round r/R · step s/S · loss …' in the progress bar while the noise is optimised."""

    def __init__(self, params, image_count: int):
        self.params = params
        self.image_count = image_count
        self.total = params.max_passes
        self.done = 0

    def __call__(self, image: int, round_index: int, step: int, scores: Scores) -> None:
        p = self.params
        self.done += 1
        if round_index == p.max_rounds:
            where = f"fallback · step {step + 1}/{p.fallback_steps}"
        else:
            where = f"round {round_index + 1}/{p.max_rounds} · step {step + 1}/{p.steps_per_round}"
        which = f" image {image + 1}/{self.image_count} ·" if self.image_count > 1 else ""
        state = shared.state
        state.textinfo = (
            f"InitNO{which} {where} · loss {scores.joint:.3f} (cross {scores.cross:.3f}, self {scores.conflict:.3f})"
        )
        state.sampling_steps = self.total * self.image_count
        state.sampling_step = min(self.done, state.sampling_steps)


class _GuidanceProgress:
    """'InitNO+ guidance · step s/S · loss …' in the progress bar while the sampler's steps are guided."""

    def __init__(self, plan: GuidancePlan, image_count: int):
        self.plan = plan
        self.image_count = image_count
        self.last_step: tuple[int, int] | None = None
        self.refinement = 0

    def __call__(self, image: int, step: int, losses: dict[str, float]) -> None:
        self.refinement = self.refinement + 1 if self.last_step == (image, step) else 0
        self.last_step = (image, step)
        which = f" · image {image + 1}/{self.image_count}" if self.image_count > 1 else ""
        refining = f" · refinement {self.refinement}" if self.refinement else ""
        loss = f"loss {losses['cross']:.3f}"
        if self.plan.augmented:
            loss += f" (self {losses['conflict']:.3f})"
        name = METHOD_NAMES[self.plan.method]
        shared.state.textinfo = f"{name} guidance{which} · step {step + 1}/{self.plan.guided}{refining} · {loss}"


@contextlib.contextmanager
def _guidance_pass(p, model, unet: torch.nn.Module) -> Iterator[None]:
    """Around each step's guidance passes: still the model sampling started with (the Refiner switch can
    load another checkpoint mid-sampling), and differentiable (`host.differentiable_passes`)."""
    if p.sd_model is not model:
        raise host.Unsupported("the Refiner switched to another checkpoint during the guided steps")
    with host.differentiable_passes(model, unet):
        yield


def _guidance_finished() -> None:
    shared.state.textinfo = None
    devices.torch_gc()


def own_generation_params(p) -> dict:
    """`p.extra_generation_params`, first copied if still shared: X/Y/Z cells are shallow copies of one
    `p`, and what one cell writes must not show up in the others' infotexts."""
    if getattr(p, "_initno_params_owner", None) is not p:
        p.extra_generation_params = dict(p.extra_generation_params)
        p.comments = dict(p.comments)
        p._initno_params_owner = p
    return p.extra_generation_params


def comment(p, message: str) -> None:
    """A message for the console and for the text under the gallery."""
    print(message)
    own_generation_params(p)
    p.comment(message)


def job_of(p) -> InitNOJob | None:
    return getattr(p, ATTRIBUTE, None)


def start_job(p, args: ScriptArgs) -> InitNOJob:
    job = InitNOJob(args)
    setattr(p, ATTRIBUTE, job)
    job.write_infotext(p)
    return job
