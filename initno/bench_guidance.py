"""What a guided sampling step costs (InitNO+, Attend-and-Excite) against a plain one.

    python -m initno.bench_guidance            # full-size SD1.x UNet, random weights, 512×512
    python -m initno.bench_guidance --tiny     # the embedded tiny model (seconds)

A plain sampling step of one image is one UNet call on the cond and uncond rows together (batch 2, no
gradients), as the WebUI's CFG denoiser makes it; the sampler's own arithmetic is negligible beside it.
A guided step adds one guidance pass: a cond-only forward with gradients up to the last layer whose maps
are read, the scores, and the backward to the latent (`ImageGuidance.guide` at a step without refinement).
Each refinement iteration costs one more such pass. Both run with memory-efficient attention in the
layers that are not read (as the host's `sdp` optimisation), in one process, taking their turns (plain,
guided, plain, …) so that a neighbour's load falls on both alike; a step's time is the process's CPU time
on a CPU (wall time on a GPU), the figure the median over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .bench import DTYPES, parse_size, random_unet
from .tiny import fused_attention_forward


def measure(args) -> dict[str, float]:
    from ldm.modules.attention import CrossAttention

    if args.threads:
        torch.set_num_threads(args.threads)
    host_forward = CrossAttention.forward
    try:
        with torch.no_grad():
            return _measure(args, CrossAttention)
    finally:
        CrossAttention.forward = host_forward


def _measure(args, attention_class) -> dict[str, float]:
    from .guidance import GuidanceSettings, ImageGuidance
    from .optimize import Denoiser

    config, unet, apply = random_unet(args, "sd1")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    attention_class.forward = fused_attention_forward
    generator = torch.Generator().manual_seed(0)
    height, width = parse_size(args.size)
    latent = torch.randn(1, 4, height // 8, width // 8, generator=generator).to(device)
    context = torch.randn(2, 77, config["context_dim"], generator=generator).to(device, dtype)
    denoiser = Denoiser(unet=unet, apply=apply, timestep=981.0)
    plan = GuidanceSettings("ae", refinements=()).plan(50)
    guide = ImageGuidance(denoiser, context[:1], [[2], [5]], plan)
    timesteps = torch.full((2,), 801.0, device=device)

    def plain_step():
        apply(torch.cat([latent, latent]), timesteps, context)

    def guided_step():
        guide.guide(5, latent, 801.0)
        plain_step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def seconds(step) -> float:
        sync()
        start = time.process_time() if device.type == "cpu" else time.perf_counter()
        step()
        sync()
        return (time.process_time() if device.type == "cpu" else time.perf_counter()) - start

    plain_step(), guided_step()  # warm-up: lazy imports, allocator caches, where the guidance pass stops
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    for _ in range(args.repeats):
        times["plain"].append(seconds(plain_step))
        times["guided"].append(seconds(guided_step))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initno.bench_guidance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny model instead of the full SD1 UNet")
    parser.add_argument("--size", default="512", help="image size in pixels: 512 or WxH")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    times = measure(args)
    model = "tiny SD1 layout" if args.tiny else "SD1.x UNet"
    print(f"{model}, {args.size} px, {args.dtype}, {args.device}, median of {args.repeats}")
    print(f"plain sampling step (one UNet call, cond + uncond): {times['plain']:.3f} s")
    print(f"guided sampling step (+ one guidance pass):          {times['guided']:.3f} s")
    print(f"ratio guided / plain: {times['guided'] / times['plain']:.2f}")
    print(f"one guidance pass (= one refinement iteration) / plain step: {times['guided'] / times['plain'] - 1:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
