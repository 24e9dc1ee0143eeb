"""Samplers as A1111 runs them: modules/sd_samplers_kdiffusion.py (KDiffusionSampler around
k_diffusion.external.CompVisDenoiser), modules/sd_samplers_timesteps.py (DDIM), the CFG wrapper of
modules/sd_samplers_cfg_denoiser.py (interrupt check, AND composition) and the noise hijack of
modules/sd_samplers_common.py (ancestral noise from `p.rng.next()`).

The k-diffusion functions (Euler, Euler ancestral, the discrete sigma schedule) are written here from
their equations rather than imported: the PyPI `k-diffusion` package imports torchvision at import time,
which needs a second torch build (gigabytes) that this environment cannot install.
"""

from __future__ import annotations

import types

import torch
from modules import prompt_parser, shared
from modules.shared import opts, state


class InterruptedException(BaseException):
    pass


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

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.step = 0

    def forward(self, x, sigma, uncond, cond, cond_scale):
        if state.interrupted or state.skipped:
            raise InterruptedException
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        repeats = [len(c) for c in conds_list]
        x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(repeats)] + [sigma])
        if tensor.shape[1] == uncond.shape[1]:
            x_out = self.inner(x_in, sigma_in, condition_dict(catenate_conds([tensor, uncond])))
        else:  # different lengths: cond and uncond batches run separately (opts.pad_cond_uncond off)
            n = tensor.shape[0]
            x_out = torch.cat(
                [
                    self.inner(x_in[:n], sigma_in[:n], condition_dict(tensor)),
                    self.inner(x_in[n:], sigma_in[n:], condition_dict(uncond)),
                ]
            )
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for index, weight in conds:
                denoised[i] += (x_out[index] - denoised_uncond[i]) * (weight * cond_scale)
        self.step += 1
        return denoised


def sample_euler(model, x, sigmas, extra_args, callback, rng):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(model, x, sigmas, extra_args, callback, rng, eta=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + rng.next() * sigma_up  # TorchHijack.randn_like: the image's own generators
    return x


SAMPLERS = {"Euler": sample_euler, "Euler a": sample_euler_ancestral}


def find_sampler_config(name):
    if name not in SAMPLERS and name != "DDIM":
        return None
    return types.SimpleNamespace(name=name, options={}, total_steps=lambda steps: steps)


class KDiffusionSampler:
    def __init__(self, funcname, sd_model):
        self.func = SAMPLERS[funcname]
        denoiser = CompVisVDenoiser if sd_model.parameterization == "v" else CompVisDenoiser
        self.model_wrap = denoiser(sd_model)
        self.model_wrap_cfg = CFGDenoiser(self.model_wrap)
        self.config = find_sampler_config(funcname)
        self.last_latent = None

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps).cpu()

    def callback_state(self, d):
        state.sampling_step = d["i"]
        self.last_latent = d["denoised"]

    def launch_sampling(self, steps, func):
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        self.last_latent = x
        self.model_wrap_cfg.step = 0
        extra = {"cond": conditioning, "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale}
        return self.launch_sampling(
            steps, lambda: self.func(self.model_wrap_cfg, x, sigmas, extra, self.callback_state, p.rng)
        )

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = self.get_sigmas(p, steps)[steps - t_enc - 1 :]
        xi = x + noise * sigmas[0]
        self.last_latent = xi
        self.model_wrap_cfg.step = 0
        extra = {"cond": conditioning, "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale}
        return self.launch_sampling(
            t_enc + 1, lambda: self.func(self.model_wrap_cfg, xi, sigmas, extra, self.callback_state, p.rng)
        )


class CompVisSampler:
    """modules/sd_samplers_timesteps.py with DDIM (eta 0): x is used as is, timesteps 1..999."""

    def __init__(self, sd_model):
        self.model = sd_model
        self.model_wrap_cfg = CFGDenoiser(lambda x, t, cond: sd_model.apply_model(x, t, cond))
        self.config = find_sampler_config("DDIM")
        self.last_latent = None

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        alphas = self.model.alphas_cumprod
        state.sampling_steps, state.sampling_step = steps, 0
        self.model_wrap_cfg.step = 0
        try:
            for i in reversed(range(len(timesteps))):
                t = timesteps[i]
                a_t = alphas[t]
                a_prev = alphas[timesteps[i - 1]] if i > 0 else alphas[0]
                eps = self.model_wrap_cfg(
                    x, torch.full((x.shape[0],), float(t)), unconditional_conditioning, conditioning, p.cfg_scale
                )
                x = a_prev.sqrt() * (x - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
                self.last_latent = x
                state.sampling_step += 1
        except InterruptedException:
            return self.last_latent
        return x


def create_sampler(name, model):
    if name == "DDIM":
        return CompVisSampler(model)
    if name not in SAMPLERS:
        raise ValueError(f"implementation error: sampler {name} not in the stand-in")
    return KDiffusionSampler(name, model)


def fix_p_invalid_sampler_and_scheduler(p):
    pass


def sample_to_image(samples, index=0, approximation=None):
    raise NotImplementedError


__all__ = ["InterruptedException", "create_sampler", "find_sampler_config", "opts", "shared"]
