"""Mirrors modules/rng.py: one generator per seed; `next()` gives the first noise, then fresh draws from
the same generators (k-diffusion's ancestral noise comes from here too)."""

import torch
from modules import devices, shared

next_calls = 0


def create_generator(seed):
    return torch.Generator(devices.cpu).manual_seed(int(seed))


def randn(seed, shape, generator=None):
    torch.manual_seed(seed)
    return torch.randn(shape, device=devices.cpu, generator=generator).to(shared.device)


def randn_without_seed(shape, generator=None):
    return torch.randn(shape, device=devices.cpu, generator=generator).to(shared.device)


def slerp(val, low, high):
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.generators = [create_generator(seed) for seed in seeds]
        self.is_first = True

    def first(self):
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            noise = randn(seed, self.shape, generator=generator)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                noise = slerp(self.subseed_strength, noise, randn(subseed, self.shape))
            xs.append(noise)
        if shared.opts.eta_noise_seed_delta:
            self.generators = [create_generator(seed + shared.opts.eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(xs).to(shared.device)

    def next(self):
        global next_calls
        next_calls += 1
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([randn_without_seed(self.shape, generator=g) for g in self.generators]).to(shared.device)
