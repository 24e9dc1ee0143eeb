"""Samplers as A1111 v1.10.1 runs them, in one module here:

- modules/sd_samplers_common.py: `InterruptedException`, `TorchHijack` (k-diffusion's `torch.randn_like`
  becomes `p.rng.next()`), `Sampler` (`initialize`, `callback_state`, `launch_sampling`, which returns
  `last_latent` on an interrupt), `setup_img2img_steps`;
- modules/sd_samplers_cfg_denoiser.py: `CFGDenoiser.forward` (interrupt check first, AND composition,
  `sampler.last_latent` = the cond rows' x0 prediction, `step` counting completed calls);
- modules/sd_samplers_kdiffusion.py: `KDiffusionSampler` around k_diffusion.external.CompVis(V)Denoiser,
  with Euler, Euler a and Heun (k_diffusion/sampling.py at the commit A1111 pins, ab527a9);
- modules/sd_samplers_timesteps.py and sd_samplers_timesteps_impl.py: `CompVisSampler` with DDIM;
- modules/sd_samplers.py: `SamplerData` (its `total_steps` doubles for second-order samplers),
  `find_sampler_config`, `create_sampler`.

How each sampler calls the model and its callback (per `notes/a1111-samplers.md` §2–§3): Euler and Euler a
call the model once per step on the state x, then the callback, then update x; Euler and Heun draw
`randn_like` every step (unused without churn); Heun calls it a second time, after the callback, on the
temporary x_2 (except at the last step); DDIM makes steps − 1 calls (timestep 1 is never evaluated), each
on the state, and calls back after the update, drawing `randn_like` every step (times eta = 0).

The k-diffusion functions are written here from their equations rather than imported: the PyPI
`k-diffusion` package imports torchvision at import time, which needs a second torch build (gigabytes)
that this environment cannot install.
"""

from __future__ import annotations

import inspect
from collections import namedtuple

import torch
from modules import prompt_parser, shared
from modules.shared import opts, state


class InterruptedException(BaseException):
    pass


class TorchHijack:
    """sd_samplers_common.TorchHijack: `randn_like` is the next draw of the images' own generators."""

    def __init__(self, p):
        self.rng = p.rng

    def randn_like(self, x):
        return self.rng.next()


sampling_torch = torch
"""`k_diffusion.sampling.torch`: replaced by a `TorchHijack` in `Sampler.initialize`, and left there."""


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


# -- k_diffusion.external ----------------------------------------------------------------------------------


class CompVisDenoiser(torch.nn.Module):
    """k_diffusion.external.CompVisDenoiser: eps model in sigma space over the model's discrete schedule."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model
        self.sigmas = ((1 - model.alphas_cumprod) / model.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def sigma_to_t(self, sigma):
        log_sigma = torch.as_tensor(sigma).log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(torch.as_tensor(sigma).shape)

    def t_to_sigma(self, t):
        t = torch.as_tensor(t).float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def get_sigmas(self, n):
        t_max = len(self.sigmas) - 1
        sigmas = self.t_to_sigma(torch.linspace(t_max, 0, n))
        return torch.cat([sigmas, sigmas.new_zeros([1])])

    def forward(self, x, sigma, cond):
        c_out, c_in = -sigma[:, None, None, None], (1 / (sigma**2 + 1) ** 0.5)[:, None, None, None]
        return x + self.inner_model.apply_model(x * c_in, self.sigma_to_t(sigma), cond) * c_out


class CompVisVDenoiser(CompVisDenoiser):
    """k_diffusion.external.CompVisVDenoiser: the same schedule for v-prediction models."""

    def forward(self, x, sigma, cond):
        sigma = sigma[:, None, None, None]
        c_skip, c_out, c_in = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1) ** 0.5
        return x * c_skip + self.inner_model.apply_model(x * c_in, self.sigma_to_t(sigma[:, 0, 0, 0]), cond) * c_out


# -- modules/sd_samplers_timesteps.py: the timestep denoisers -------------------------------------------------


class CompVisTimestepsDenoiser(torch.nn.Module):
    """Returns eps; the input is used unscaled (x is z_t)."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, x, timesteps, cond):
        return self.inner_model.apply_model(x, timesteps, cond)


class CompVisTimestepsVDenoiser(CompVisTimestepsDenoiser):
    """v to eps: sqrt(ᾱ_t)·v + sqrt(1 − ᾱ_t)·x_t."""

    def forward(self, x, timesteps, cond):
        a_t = self.inner_model.alphas_cumprod[timesteps.to(dtype=torch.int)][:, None, None, None]
        return a_t.sqrt() * self.inner_model.apply_model(x, timesteps, cond) + (1 - a_t).sqrt() * x


# -- modules/sd_samplers_cfg_denoiser.py -------------------------------------------------------------------


def catenate_conds(conds):
    """sd_samplers_cfg_denoiser.catenate_conds: tensors, or SDXL's dicts key by key."""
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def condition_dict(c):
    """`make_condition_dict` for txt2img: SDXL's dict as it is, SD1/SD2's tensor as `c_crossattn`."""
    return dict(c) if isinstance(c, dict) else {"c_crossattn": [c]}


class CFGDenoiser(torch.nn.Module):
    """modules/sd_samplers_cfg_denoiser.py, for txt2img: cond rows per AND part, then uncond."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.model_wrap = None
        self.step = 0
        self.steps = None
        self.total_steps = None

    @property
    def inner_model(self):
        raise NotImplementedError

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond=0.0, image_cond=None):
        if state.interrupted or state.skipped:
            raise InterruptedException
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        repeats = [len(c) for c in conds_list]
        x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(repeats)] + [sigma])
        if tensor.shape[1] == uncond.shape[1]:
            x_out = self.inner_model(x_in, sigma_in, condition_dict(catenate_conds([tensor, uncond])))
        else:  # different lengths: cond and uncond batches run separately (opts.pad_cond_uncond off)
            n = tensor.shape[0]
            x_out = torch.cat(
                [
                    self.inner_model(x_in[:n], sigma_in[:n], condition_dict(tensor)),
                    self.inner_model(x_in[n:], sigma_in[n:], condition_dict(uncond)),
                ]
            )
        denoised_image_indexes = [conds[0][0] for conds in conds_list]
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for index, weight in conds:
                denoised[i] += (x_out[index] - denoised_uncond[i]) * (weight * cond_scale)
        # What `launch_sampling` returns when the next call is interrupted: the cond rows' x0 prediction.
        self.sampler.last_latent = self.get_pred_x0(
            torch.cat([x_in[i : i + 1] for i in denoised_image_indexes]),
            torch.cat([x_out[i : i + 1] for i in denoised_image_indexes]),
            sigma,
        )
        self.step += 1
        return denoised


class CFGDenoiserKDiffusion(CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = CompVisVDenoiser if shared.sd_model.parameterization == "v" else CompVisDenoiser
            self.model_wrap = denoiser(shared.sd_model)
        return self.model_wrap


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=torch.int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            v_model = shared.sd_model.parameterization == "v"
            self.model_wrap = (CompVisTimestepsVDenoiser if v_model else CompVisTimestepsDenoiser)(shared.sd_model)
        return self.model_wrap


# -- k_diffusion/sampling.py ----------------------------------------------------------------------------


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sampling_torch.randn_like(x) * s_noise  # drawn every step; only churn (off by default) would use it
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sampling_torch.randn_like(x) * s_noise * sigma_up  # default_noise_sampler
    return x


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sampling_torch.randn_like(x) * s_noise  # drawn every step; only churn (off by default) would use it
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:  # Euler method
            x = x + d * dt
        else:  # Heun's method: a second call on the temporary x_2
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


# -- modules/sd_samplers_timesteps_impl.py -------------------------------------------------------------------


def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    alphas_cumprod = shared.sd_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones(x.shape[0])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * sampling_torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# -- modules/sd_samplers_common.py, sd_samplers_kdiffusion.py, sd_samplers_timesteps.py ---------------------


class Sampler:
    eta_option_field = "eta_ancestral"

    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.model_wrap = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.last_latent = None
        self.stop_at = None
        self.eta = None
        self.config = None
        self.p = None

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        global sampling_torch
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        self.eta = getattr(p, "eta", None)
        self.eta = self.eta if self.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        sampling_torch = TorchHijack(p)
        extra_params_kwargs = {}
        if "eta" in inspect.signature(self.func).parameters:
            extra_params_kwargs["eta"] = self.eta
        return extra_params_kwargs

    def extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        return {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": 0.0,
        }


class KDiffusionSampler(Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.func = K_DIFFUSION_FUNCTIONS[funcname]
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps).cpu()

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0) if opts.sgm_noise_multiplier else x * sigmas[0]
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs["sigmas"] = sigmas
        self.last_latent = x
        self.sampler_extra_args = self.extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        xi = x + noise * sigma_sched[0]
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs["sigmas"] = sigma_sched
        self.last_latent = x
        self.sampler_extra_args = self.extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )


class CompVisSampler(Sampler):
    eta_option_field = "eta_ddim"

    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.func = TIMESTEPS_FUNCTIONS[funcname]
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs["timesteps"] = timesteps
        self.last_latent = x
        self.sampler_extra_args = self.extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        alphas_cumprod = shared.sd_model.alphas_cumprod
        a_t = alphas_cumprod[timesteps[t_enc]]
        xi = x * a_t.sqrt() + noise * (1 - a_t).sqrt()
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs["timesteps"] = timesteps[:t_enc]
        self.last_latent = x
        self.sampler_extra_args = self.extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )


# -- modules/sd_samplers.py --------------------------------------------------------------------------------


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


K_DIFFUSION_FUNCTIONS = {"Euler a": sample_euler_ancestral, "Euler": sample_euler, "Heun": sample_heun}
TIMESTEPS_FUNCTIONS = {"DDIM": ddim}

all_samplers = [
    SamplerData("Euler a", lambda model: KDiffusionSampler("Euler a", model), ["k_euler_a"], {"uses_ensd": True}),
    SamplerData("Euler", lambda model: KDiffusionSampler("Euler", model), ["k_euler"], {}),
    SamplerData("Heun", lambda model: KDiffusionSampler("Heun", model), ["k_heun"], {"second_order": True}),
    SamplerData("DDIM", lambda model: CompVisSampler("DDIM", model), ["ddim"], {}),
]
all_samplers_map = {sampler.name: sampler for sampler in all_samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name) if name is not None else all_samplers[0]


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


__all__ = ["InterruptedException", "create_sampler", "find_sampler_config", "opts", "shared"]
