"""One generation's InitNO work: for each first-pass txt2img batch, choose (lookahead) or optimise each
image's noise in place and/or (InitNO+, Attend-and-Excite) put the sampling guidance on the batch's sampler;
turn every fault into a clear "skipped" with the image still generated, and keep the per-image outcome for
the infotext.

The concerns each have their module: the host's model and passes (`hosts`, `checks`, `conditioning`,
`passes`), Fast's choice (`lookahead`), the learnt thresholds (`calibration`), the messages (`faults`), the
infotext (`infotext`), the progress bar (`progress`), the guidance on the sampler (`guided_sampling`), the
diagnostic images (`gallery`); this module runs them in order.

The job lives on `p` (`p._initno_job`), so nothing carries over between generations, and X/Y/Z cells
(shallow copies of `p`) each get their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from modules import devices

from ..calibration import with_thresholds
from ..optimize import Denoiser, ImageRequest, ImageResult, optimize_noise
from ..params import InitNOParams
from ..selection import SelectionResult
from ..subjects import Subject, choose_subjects, require_subjects
from . import calibration, conditioning, faults, gallery, guided_sampling, infotext, lookahead, passes, progress
from .args import ScriptArgs
from .hosts import Host, host_of
from .infotext import (
    GUIDANCE_ONLY,
    INTERRUPTED_CALIBRATING,
    ImageOutcome,
    comment,
    interrupted_selection,
    skipped,
    status_of,
    status_of_selection,
)
from .sampler_hook import SamplerGuidance

ATTRIBUTE = "_initno_job"


class InitNOJob:
    def __init__(self, args: ScriptArgs):
        self.args = args
        self.outcomes: dict[int, ImageOutcome] = {}
        self.sampler_guidance: SamplerGuidance | None = None

    def run_batch(self, p, x: torch.Tensor) -> None:
        """Replaces the batch's initial noise `x` (B, C, H, W) in place with the optimised noise, and/or
        puts the sampling guidance on the batch's sampler."""
        self.end_guidance()  # a previous batch's, where a fork skipped `post_sample` (see guided_sampling)
        first = p.iteration * p.batch_size
        try:
            self._run_batch(p, x, first)
        except Exception as error:  # the WebUI never fails because of InitNO: the image generates without it
            self._skip(p, range(first, first + x.shape[0]), faults.reason(error))
        finally:
            progress.done()

    def _run_batch(self, p, x: torch.Tensor, first: int) -> None:
        host = host_of(p.sd_model)
        denoiser = passes.denoiser(p, host)
        requests, positions = self._requests(p, host, x, first)
        if not requests:
            return
        if self.args.selects_noise:
            self._select(p, host, x, denoiser, requests, positions, first)
            host.use_noise(p, x)
        if self.args.optimises_noise:
            params = self._params(p, host, x, denoiser, positions, first)
            if params is None:
                return
            results, denoiser = self._optimise(host, x, denoiser, requests, params)
            for i, result in zip(positions, results):
                self._use_noise(x, i, first + i, result)
            host.use_noise(p, x)
        if self.args.guidance is not None:
            outcomes = [self.outcomes[first + i] if i in positions else None for i in range(x.shape[0])]
            self.sampler_guidance = guided_sampling.start(p, host, self.args.guidance, denoiser, requests, outcomes)

    def _requests(self, p, host: Host, x: torch.Tensor, first: int) -> tuple[list[ImageRequest], list[int]]:
        """The batch's images InitNO can run for, and their positions in the batch; the others are skipped."""
        requests, positions = [], []
        for i in range(x.shape[0]):
            try:
                with torch.inference_mode(False):  # normal tensors, even where the host samples in inference mode
                    subjects, request = self._request(p, host, i, x[i])
            except ValueError as error:  # SubjectError among them: this image is skipped, the others run
                self._skip(p, [first + i], str(error))
                continue
            changes_noise = self.args.optimises_noise or self.args.selects_noise
            self.outcomes[first + i] = ImageOutcome("pending" if changes_noise else GUIDANCE_ONLY, subjects)
            requests.append(request)
            positions.append(i)
        return requests, positions

    def _request(self, p, host: Host, i: int, noise: torch.Tensor) -> tuple[list[Subject], ImageRequest]:
        prompt = conditioning.read_prompt(p, host, i)
        subjects = choose_subjects(prompt.tokens, self.args.subjects, prompt.encode)
        require_subjects(prompt.tokens, subjects)
        cond = conditioning.image_conditioning(p, i, prompt.part_lengths)
        positions = [list(s.positions) for s in subjects]
        softmax = conditioning.softmax_positions(p.sd_model, prompt.tokens)
        return subjects, ImageRequest(noise.detach().clone(), p.seeds[i], cond, positions, softmax)

    def _params(self, p, host: Host, x, denoiser: Denoiser, positions, first: int) -> InitNOParams | None:
        """The optimisation's settings with the validity thresholds in effect: the settings' (official), or
        the loaded model's calibration, recorded for each image's infotext. None if Interrupt or Skip stopped
        the calibration: the images keep their noise."""
        if not self.args.calibrated:
            return self.args.params
        try:
            calibrated = calibration.calibration_for(p, host, denoiser, x)
        except progress.Interrupted:
            for i in positions:
                self.outcomes[first + i].status = INTERRUPTED_CALIBRATING
            return None
        for i in positions:
            self.outcomes[first + i].calibration = calibrated
        return with_thresholds(self.args.params, calibrated)

    def _optimise(
        self, host: Host, x, denoiser: Denoiser, requests, params: InitNOParams
    ) -> tuple[list[ImageResult], Denoiser]:
        """The batch's optimised noise, and the denoiser that managed it: Automatic checkpointing can misjudge
        the free memory (e.g. --medvram moves the UNet in only when it runs), so a step that ran out of
        memory without checkpointing is tried once more with it."""
        with host.prepared(x):
            results = self._optimise_unless_short_of_memory(host, denoiser, requests, params)
            if results is None:  # outside the `except`, whose traceback would hold the failed pass's memory
                devices.torch_gc()
                denoiser = replace(denoiser, checkpoint_blocks=True)
                results = self._optimise_once(host, denoiser, requests, params)
        return results, denoiser

    def _optimise_unless_short_of_memory(
        self, host: Host, denoiser: Denoiser, requests, params: InitNOParams
    ) -> list[ImageResult] | None:
        try:
            return self._optimise_once(host, denoiser, requests, params)
        except torch.cuda.OutOfMemoryError:
            if denoiser.checkpoint_blocks or not passes.checkpointing_automatic():
                raise
            return None

    def _optimise_once(self, host: Host, denoiser: Denoiser, requests, params: InitNOParams) -> list[ImageResult]:
        shown = progress.NoiseProgress(params, len(requests))
        with passes.differentiable_passes(host, denoiser.unet):
            return optimize_noise(denoiser, requests, params, progress=shown, cancel=progress.cancelled)

    def _select(self, p, host: Host, x, denoiser: Denoiser, requests, positions, first: int) -> None:
        """Each image's noise chosen by lookahead, one image after the other (its candidates share the UNet
        calls); on Interrupt or Skip the images not done keep their noise."""
        params = lookahead.params_for(self.args.lookahead, p.steps)
        with torch.inference_mode(False):
            unconds = [conditioning.image_unconditioning(p, i) for i in positions]
        shown = progress.LookaheadProgress(params, len(requests))
        with host.prepared(x):
            for n, (i, request, uncond) in enumerate(zip(positions, requests, unconds)):
                shown.next_image(n)
                try:
                    result = lookahead.select(p, host, denoiser, request, uncond, params, shown)
                except progress.Interrupted:
                    for later, j in enumerate(positions[n:]):
                        self.outcomes[first + j].status = interrupted_selection(shown.passes if later == 0 else 0)
                    return
                self._use_noise(x, i, first + i, result)

    def _use_noise(self, x: torch.Tensor, i: int, index: int, result: SelectionResult | ImageResult) -> None:
        """Image i of the batch starts from the chosen or optimised noise; its outcome records how."""
        x[i].copy_(result.latent.to(dtype=x.dtype, device=x.device))
        outcome = self.outcomes[index]
        if isinstance(result, SelectionResult):
            outcome.selection, outcome.status = result, status_of_selection(result)
        else:
            outcome.result, outcome.status = result, status_of(result)
        print(f"InitNO: image {index + 1}: {outcome.status}; {outcome.scores}")

    def _skip(self, p, indices: Iterable[int], reason: str) -> None:
        for index in indices:
            previous = self.outcomes.get(index)
            outcome = ImageOutcome(skipped(reason), previous.subjects if previous else [])
            if self.args.guidance is not None:
                outcome.guidance_stop = reason
            self.outcomes[index] = outcome
        comment(p, f"InitNO {skipped(reason)}")

    def end_guidance(self) -> None:
        """Takes the guidance off the batch's sampler, if it is on (see `guided_sampling`)."""
        if self.sampler_guidance is not None:
            guided_sampling.end(self.sampler_guidance)
            self.sampler_guidance = None

    def finish(self, p, processed) -> None:
        """After the last batch: the outcomes as per-image lists in `info`, and the diagnostic images."""
        self.end_guidance()
        infotext.write_lists(p, processed, self.args, self.outcomes)
        if self.args.diagnostics:
            gallery.add_diagnostics(p, processed, self.outcomes, self.args.params)


def job_of(p) -> InitNOJob | None:
    return getattr(p, ATTRIBUTE, None)


def start_job(p, args: ScriptArgs) -> InitNOJob:
    job = InitNOJob(args)
    setattr(p, ATTRIBUTE, job)
    infotext.write(p, args, job.outcomes)
    return job
