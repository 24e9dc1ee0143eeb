"""Mirrors modules/processing.py of A1111 v1.10.1 for txt2img: the order of script hooks, the
`torch.no_grad()` and autocast scopes, seeds, `p.rng` per batch, conditioning, the sampling hook
`process_before_every_sampling` (first pass and hires pass), decoding, infotexts and `Processed`.

When the loaded model is a Forge 2 one (`forge_objects`: tests/host/backend), it runs as Forge 2's
modules/processing.py (dfdcbab6) does instead: everything inside `torch.inference_mode()` (:911), the
`forge_objects` reset before the hook (:1373), `p.modified_noise` taken as the initial noise after it
(:1383-1385), the hook called twice in the hires pass (:1508-1526), and the sampler's
`sampling_prepare` / `sampling_cleanup` around its sampling (sd_samplers_kdiffusion.py:198, :242)."""

from __future__ import annotations

import functools
import json
import random

import numpy as np
import torch
from modules import devices, extra_networks, infotext_utils, prompt_parser, rng, scripts, sd_samplers, shared
from modules.sd_hijack import model_hijack
from modules.shared import opts, state
from PIL import Image

opt_C = 4
opt_f = 8


def is_forge2(model) -> bool:
    return hasattr(model, "forge_objects")


def _sample_forge2(p, x, sample):
    from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

    unet = p.sd_model.forge_objects.unet
    sampling_prepare(unet, x)
    try:
        return sample()
    finally:
        sampling_cleanup(unet)


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        seed = int(seed)
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


class StableDiffusionProcessing:
    token_merging_ratio = 0
    token_merging_ratio_hr = 0

    def __init__(
        self,
        prompt="",
        negative_prompt="",
        seed=-1,
        subseed=-1,
        subseed_strength=0.0,
        sampler_name="Euler",
        batch_size=1,
        n_iter=1,
        steps=4,
        cfg_scale=7.0,
        width=64,
        height=64,
        styles=None,
        override_settings=None,
        do_not_save_samples=True,
        **kwargs,
    ):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.subseed, self.subseed_strength = seed, subseed, subseed_strength
        self.sampler_name, self.scheduler = sampler_name, None
        self.batch_size, self.n_iter, self.steps, self.cfg_scale = batch_size, n_iter, steps, cfg_scale
        self.width, self.height = width, height
        self.styles = styles or []
        self.override_settings = override_settings or {}
        self.do_not_save_samples = do_not_save_samples
        self.outpath_samples = "outputs/txt2img-images"
        self.extra_generation_params = {}
        self.comments = {}
        self.scripts = None
        self.script_args = ()
        self.sampler_noise_scheduler_override = None
        self.seed_resize_from_h = self.seed_resize_from_w = 0
        self.is_api = False
        self.iteration = 0
        self.is_hr_pass = False
        self.denoising_strength = kwargs.pop("denoising_strength", None)
        self.disable_extra_networks = False
        self.sd_model_name = self.sd_model_hash = None
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        self.all_prompts = (
            self.prompt if isinstance(self.prompt, list) else self.batch_size * self.n_iter * [self.prompt]
        )
        self.all_negative_prompts = self.batch_size * self.n_iter * [self.negative_prompt]
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative = prompt_parser.SdConditioning(
            self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True
        )
        config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = config.total_steps(self.steps) if config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = prompt_parser.get_learned_conditioning(shared.sd_model, negative, total_steps)
        self.c = prompt_parser.get_multicond_learned_conditioning(shared.sd_model, prompts, total_steps)

    def save_samples(self) -> bool:
        return opts.samples_save and not self.do_not_save_samples and not (state.interrupted or state.skipped)

    def get_token_merging_ratio(self, for_hr=False):
        if for_hr:
            return (
                self.token_merging_ratio_hr
                or opts.token_merging_ratio_hr
                or self.token_merging_ratio
                or opts.token_merging_ratio
            )
        return self.token_merging_ratio or opts.token_merging_ratio

    def close(self):
        self.sampler = None
        self.c = self.uc = None


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, denoising_strength=0.75, hr_scale=2.0, hr_second_pass_steps=0, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.hr_c = self.hr_uc = None
        self.firstpass_image = None
        self.modified_noise = None

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)

    def txt2img_image_conditioning(self, x, width=None, height=None):
        if is_forge2(self.sd_model):  # Forge 2 processing.py:300-301
            self.is_using_inpainting_conditioning = self.sd_model.is_inpaint
        else:
            self.is_using_inpainting_conditioning = self.sd_model.model.conditioning_key in {"hybrid", "concat"}
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        forge2 = is_forge2(self.sd_model)
        if forge2:
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        if forge2 and self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None

        sample = functools.partial(
            self.sampler.sample,
            self,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.txt2img_image_conditioning(x),
        )
        samples = _sample_forge2(self, x, sample) if forge2 else sample()
        del x
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, seeds)

    def sample_hr_pass(self, samples, seeds):
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(
            samples, size=(self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f), mode="nearest"
        )
        state.nextjob()
        self.rng = rng.ImageRNG(
            samples.shape[1:], self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength
        )
        noise = self.rng.next()
        self.hr_c, self.hr_uc = self.c, self.uc  # opts.hires_fix_use_firstpass_conds-like: same prompts
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
            if is_forge2(self.sd_model):  # Forge 2 calls it once more after resetting forge_objects
                self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
                self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
                if self.modified_noise is not None:
                    noise, self.modified_noise = self.modified_noise, None
        samples = self.sampler.sample_img2img(
            self, samples, noise, self.hr_c, self.hr_uc, steps=self.hr_second_pass_steps or self.steps
        )
        self.is_hr_pass = False
        return samples


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", all_prompts=None, all_seeds=None, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height = p.width, p.height
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.all_prompts = all_prompts or p.all_prompts
        self.all_seeds = all_seeds or p.all_seeds
        self.infotexts = infotexts or [info] * len(images_list)
        self.index_of_first_image = 0

    def js(self):
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "width": self.width,
            "height": self.height,
            "extra_generation_params": self.extra_generation_params,
            "infotexts": self.infotexts,
            "index_of_first_image": self.index_of_first_image,
        }
        return json.dumps(obj, default=lambda o: None)


def create_infotext(
    p,
    all_prompts,
    all_seeds,
    all_subseeds,
    comments=None,
    iteration=0,
    position_in_batch=0,
    use_main_prompt=False,
    index=None,
    all_negative_prompts=None,
):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(**locals())
    text = ", ".join(
        k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None
    )
    negative = all_negative_prompts[index] if all_negative_prompts else p.all_negative_prompts[index]
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p):
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    model_hijack.clear_comments()
    p.setup_prompts()
    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts, output_images = [], []
    with torch.inference_mode() if is_forge2(p.sd_model) else torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]
            latent_channels = getattr(shared.sd_model, "latent_channels", opt_C)
            p.rng = rng.ImageRNG(
                (latent_channels, p.height // opt_f, p.width // opt_f),
                p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
            )
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.parse_extra_network_prompts()
            extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            p.extra_generation_params.update(model_hijack.extra_generation_params)

            with devices.without_autocast() if devices.unet_needs_upcast else devices.autocast():
                samples = p.sample(
                    conditioning=p.c,
                    unconditional_conditioning=p.uc,
                    seeds=p.seeds,
                    subseeds=p.subseeds,
                    subseed_strength=p.subseed_strength,
                    prompts=p.prompts,
                )
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            devices.test_for_nans(samples, "unet")
            decoded = torch.clamp((p.sd_model.decode_first_stage(samples).float() + 1.0) / 2.0, 0.0, 1.0)
            del samples
            devices.torch_gc()
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, decoded, batch_number=n)
                batch_params = scripts.PostprocessBatchListArgs(list(decoded))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                decoded = batch_params.images

            for i, x_sample in enumerate(decoded):
                p.batch_index = i
                array = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(array)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                text = create_infotext(
                    p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts
                )
                infotexts.append(text)
                image.info["parameters"] = text
                output_images.append(image)
            del decoded
    p.color_corrections = None
    res = Processed(
        p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0] if infotexts else "", infotexts=infotexts
    )
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
