"""What one InitNO step costs, against one bare UNet forward+backward, measured side by side.

    python -m initno.bench            # full-size SD1.x UNet, random weights, 512×512 (minutes on a CPU)
    python -m initno.bench --tiny     # the embedded tiny model (seconds)
    python -m initno.bench --official # also the official implementation's way of computing a step
    python -m initno.bench --arch sdxl --dtype bf16 --checkpoint   # SDXL base at 1024×1024

Variants, each in its own process so that peak memory is its own:
- bare: the UNet with memory-efficient attention (scaled_dot_product_attention) in every layer, a full
  forward and the gradient w.r.t. the latent only (no parameter gradients);
- initno: one optimisation step of this package (explicit attention only where maps are read, the pass
  stopped after the last of those layers, scores, backward to the noise, Adam and the KL projection);
- initno-ckpt (with --checkpoint): the same step with the transformer blocks checkpointed;
- official (optional): as the official code does it: explicit attention in every layer, the whole UNet,
  and `loss.backward()` with UNet weight gradients.

`--arch` picks the UNet layout (sd1 at 512², sd2 at 768², sdxl at 1024² by default; `--size 1216x832`
for other sizes). The weights' own size is printed apart: a GPU holds them in addition to the peak.

Time is the median over the repeats; memory is the peak above the memory held before the pass (GPU:
allocator peak; CPU: the process's peak resident set, reset through /proc/self/clear_refs, with glibc
told to return freed blocks at once).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = ("bare", "initno", "initno-ckpt", "official")
ARCHS = {  # layout: (full-size config, tiny config, default size) in initno.tiny
    "sd1": ("SD1_UNET", "TINY_UNET", 512),
    "sd2": ("SD2_UNET", "TINY_SD2_UNET", 768),
    "sdxl": ("SDXL_UNET", "TINY_SDXL_UNET", 1024),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _resident_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


class _Memory:
    """Peak memory above a baseline, on the device the work runs on."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def current(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _resident_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else _resident_kib("VmHWM") * 1024


def _sdpa_forward(self, x, context=None, mask=None, **kwargs):
    """Memory-efficient attention, as the host's `sdp` optimisation installs on the class."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    batch, heads = x.shape[0], self.heads
    q, k, v = (t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))


def parse_size(text: str) -> tuple[int, int]:
    """ "1024" or "1216x832" (width × height) -> (height, width) in pixels."""
    width, _, height = text.lower().partition("x")
    return int(height or width), int(width)


def _child(variant: str, args) -> dict:
    from ldm.modules.attention import CrossAttention

    from . import tiny
    from .attention import AttentionCapture
    from .optimize import Denoiser, ImageRequest, frozen_parameters, optimize_noise
    from .params import InitNOParams
    from .scores import evaluate_attention

    torch.set_grad_enabled(False)
    config = getattr(tiny, ARCHS[args.arch][1 if args.tiny else 0])
    device, dtype, repeats = torch.device(args.device), DTYPES[args.dtype], args.repeats
    unet = tiny.build_unet(config, seed=0).to(device=device, dtype=dtype)
    for module in unet.modules():  # CPU group_norm wants fp32 weights for ldm's fp32 GroupNorm32 input
        if isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm):
            module.float()
    if variant != "official":
        CrossAttention.forward = _sdpa_forward
    generator = torch.Generator().manual_seed(0)
    height, width = parse_size(args.size)
    noise = torch.randn(1, 4, height // 8, width // 8, generator=generator).to(device)
    context = torch.randn(1, 77, config["context_dim"], generator=generator).to(device, dtype)
    cond = context
    if "adm_in_channels" in config:
        cond = {"crossattn": context, "vector": torch.randn(1, config["adm_in_channels"]).to(device, dtype)}
    timesteps = torch.full((1,), 981.0, device=device)
    model_call = tiny.apply_unet(unet)

    def apply(latent, t, c):  # as the host's apply_model: UNet-dtype inputs, under autocast
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model_call(latent.to(dtype), t, c)

    memory = _Memory(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    # A short run of the same work first, so that lazy imports, thread pools and allocator caches
    # are not counted as the pass's memory.
    denoiser = Denoiser(unet=unet, apply=apply, timestep=981.0, checkpoint_blocks=variant == "initno-ckpt")
    warm_up = InitNOParams(max_rounds=1, steps_per_round=2, fallback_steps=0, cross_threshold=0.0)
    optimize_noise(denoiser, [ImageRequest(noise[0], 0, cond, [[2], [5]])], warm_up)
    baseline = memory.current()

    if variant == "bare":
        with frozen_parameters(unet), torch.enable_grad():
            latent = noise.clone().requires_grad_(True)
            for index in range(repeats + 1):
                if index == 1:
                    memory.reset_peak()
                sync()
                start = time.perf_counter()
                (grad,) = torch.autograd.grad(apply(latent, timesteps, cond).float().square().mean(), latent)
                sync()
                times.append(time.perf_counter() - start)
                del grad
        times = times[1:]

    elif variant.startswith("initno"):
        stamps: list[float] = []

        def progress(image, round_index, step, scores):
            sync()
            stamps.append(time.perf_counter())
            if step == 1:
                memory.reset_peak()

        # Steps 1 .. n-2 are full steady-state steps; step 0 also learns where to stop the pass and
        # step n-1 needs no backward.
        params = warm_up.replace(steps_per_round=repeats + 3)
        optimize_noise(denoiser, [ImageRequest(noise[0], 0, cond, [[2], [5]])], params, progress=progress)
        times = [b - a for a, b in itertools.pairwise(stamps[1:-1])]

    else:  # official
        latent_shape = noise[0].shape
        log_var = torch.zeros(latent_shape, device=device, requires_grad=True)
        mu = torch.zeros(latent_shape, device=device, requires_grad=True)
        optimizer = torch.optim.Adam([log_var, mu], lr=1e-2, eps=1e-3)
        with AttentionCapture(unet, stop_early=False) as capture, torch.enable_grad():
            for index in range(repeats + 1):
                if index == 1:
                    memory.reset_peak()
                sync()
                start = time.perf_counter()
                unet.zero_grad()
                capture.run(apply, (noise[0] * torch.exp(0.5 * log_var) + mu)[None], timesteps, cond)
                evaluation = evaluate_attention(
                    capture.cross_attention()[0], lambda p: capture.self_attention_rows(p)[0], [[2], [5]]
                )
                optimizer.zero_grad()
                evaluation.joint.backward()
                optimizer.step()
                sync()
                times.append(time.perf_counter() - start)
                del evaluation
        times = times[1:]

    weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    return {
        "variant": variant,
        "seconds": statistics.median(times),
        "peak_bytes": memory.peak() - baseline,
        "weight_bytes": weight_bytes,
    }


def _measure(variant: str, args) -> dict:
    command = [sys.executable, "-m", "initno.bench", "--child", variant, "--size", args.size, "--arch", args.arch]
    command += ["--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype]
    command += ["--tiny"] if args.tiny else []
    # Return freed blocks to the OS at once, so the resident set follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initno.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="sd1", help="UNet layout (default sd1)")
    parser.add_argument("--tiny", action="store_true", help="the layout in miniature instead of full size")
    parser.add_argument("--size", default=None, help="pixels, 1024 or WxH (default: the arch's, tiny: 128)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="UNet weights and activations")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per variant (default 3, tiny: 10)")
    parser.add_argument("--checkpoint", action="store_true", help="also measure with transformer checkpointing")
    parser.add_argument("--official", action="store_true", help="also measure the official way of computing a step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or str(128 if args.tiny else ARCHS[args.arch][2])
    args.repeats = args.repeats or (10 if args.tiny else 3)
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return 0

    model = f"{args.arch.upper()} UNet " + ("(tiny layout)" if args.tiny else "(full size)")
    height, width = parse_size(args.size)
    if height % 64 or width % 64:  # the WebUI resizes the UNet's skip connections for other sizes; ldm alone cannot
        parser.error(f"--size must be a multiple of 64 in each direction, got {width}×{height}")
    print(f"{model}, random weights, {width}×{height}, {args.dtype}, {args.device}, median of {args.repeats}")
    variants = ["bare", "initno"] + ["initno-ckpt"] * args.checkpoint + ["official"] * args.official
    results = {v: _measure(v, args) for v in variants}
    bare = results["bare"]
    print(f"UNet weights: {bare['weight_bytes'] / 2**20:.0f} MiB (held apart from the peaks below)")
    print(f"{'variant':<13}{'time/step':>12}{'peak memory':>14}{'time ratio':>12}{'memory ratio':>14}")
    for variant, result in results.items():
        print(
            f"{variant:<13}{result['seconds']:>11.3f}s{result['peak_bytes'] / 2**20:>10.0f} MiB"
            f"{result['seconds'] / bare['seconds']:>12.2f}{result['peak_bytes'] / bare['peak_bytes']:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
