"""What one InitNO step costs, against one bare UNet forward+backward, measured side by side.

    python -m initno.bench            # full-size SD1.x UNet, random weights, 512×512 (minutes on a CPU)
    python -m initno.bench --tiny     # the embedded tiny model (seconds)
    python -m initno.bench --official # also an emulation of the official implementation's step
    python -m initno.bench --arch sdxl --dtype bf16 --checkpoint   # SDXL base at 1024×1024

Variants, each in a process of its own (its own UNet, so that its memory is its own):
- bare: the UNet with memory-efficient attention (scaled_dot_product_attention) in every layer, a full
  forward and the gradient w.r.t. the latent only (no parameter gradients);
- initno: one optimisation step of this package (explicit attention only where maps are read, the pass
  stopped after the last of those layers, scores, backward to the noise, Adam and the KL projection);
- initno-ckpt (with --checkpoint): the same step with the transformer blocks checkpointed;
- official-emulated (with --official): a step computed the way the official code computes it (explicit
  attention in every layer, the whole UNet, `loss.backward()` with UNet weight gradients), in this
  process. It is an emulation of the step, not the official pipeline, whose process holds more.

Time: the processes stay up side by side and take their timed steps in turns (ABBA: the order reverses
each round), so a neighbour's load that comes and goes falls on every variant alike. On a CPU each worker
runs one thread (`--threads`) and a step's time is the worker's own CPU time (its wall time is printed
too): a busy machine stretches wall time, and a thread pool waiting for its slowest thread stretches it
unevenly. A variant's time is the median of its steps; its ratio is the median over rounds of its step's
time over the bare step's time in the same round. The machine's load average is printed before and after.

Memory, two figures per variant:
- process peak: the peak resident set of the timing process (default allocator), the UNet's weights
  included (GPU: the caching allocator's peak reserved);
- live peak: in a further process per variant, one at a time, the peak resident memory of one step above
  what the process held before it (the loaded UNet, warm-up caches), with glibc told to return freed blocks
  at once (MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0), so that it follows the live tensors
  (GPU: the allocator's peak allocated). That allocator is never timed: it page-faults on every allocation.
The UNet's weights are printed apart: a GPU holds them in addition to the live peak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("bare", "initno", "initno-ckpt", "official-emulated")
ARCHS = {  # layout: (full-size config, tiny config, default size) in initno.tiny
    "sd1": ("SD1_UNET", "TINY_UNET", 512),
    "sd2": ("SD2_UNET", "TINY_SD2_UNET", 768),
    "sdxl": ("SDXL_UNET", "TINY_SDXL_UNET", 1024),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRIMMING_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc returns freed blocks to the OS at once: the resident set then follows the live tensors."""
MIB = 2**20
MAX_REPEATS = 97
"""An InitNO worker runs one round of at most 100 passes: 2 before the timed steps, 1 after."""


def _resident_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) * 1024


class _Memory:
    """Memory of this process on the device the work runs on."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def current(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _resident_bytes("VmRSS")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        """The peak since `reset_peak` (GPU: allocated)."""
        return torch.cuda.max_memory_allocated() if self.cuda else _resident_bytes("VmHWM")

    def process_peak(self) -> int:
        """The process's peak, never reset (GPU: reserved by the caching allocator)."""
        return torch.cuda.max_memory_reserved() if self.cuda else _resident_bytes("VmHWM")


def random_unet(args, arch: str):
    """The benchmarked UNet: the layout's full-size (or `--tiny`) config with seeded random weights, on
    `--device` in `--dtype`; and a model call as the host's `apply_model` makes it (UNet-dtype inputs, under
    autocast). Returns (config, unet, apply)."""
    from . import tiny

    config = getattr(tiny, ARCHS[arch][1 if args.tiny else 0])
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    unet = tiny.build_unet(config, seed=0).to(device=device, dtype=dtype)
    for module in unet.modules():  # CPU group_norm wants fp32 weights for ldm's fp32 GroupNorm32 input
        if isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm):
            module.float()
    model_call = tiny.apply_unet(unet)

    def apply(latent, t, c):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model_call(latent.to(dtype), t, c)

    return config, unet, apply


def parse_size(text: str) -> tuple[int, int]:
    """ "1024" or "1216x832" (width × height) -> (height, width) in pixels."""
    width, _, height = text.lower().partition("x")
    return int(height or width), int(width)


# -- the worker: one variant in its own process ------------------------------------------------------


class _Finish(Exception):
    """The parent has no more steps for this worker."""


class _Channel:
    """The worker's side of the conversation: JSON lines out, commands ("step", "finish") in."""

    def __init__(self):
        self.out = sys.stdout
        sys.stdout = sys.stderr  # anything else printed must not be taken for an answer

    def send(self, **message) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    @staticmethod
    def next_step() -> None:
        """Returns at the parent's "step"; raises _Finish at "finish" (or when the parent is gone)."""
        if sys.stdin.readline().strip() != "step":
            raise _Finish


def _worker(variant: str, args) -> None:
    from ldm.modules.attention import CrossAttention

    from .attention import AttentionCapture
    from .optimize import Denoiser, ImageRequest, frozen_parameters, optimize_noise
    from .params import InitNOParams
    from .scores import evaluate_attention
    from .tiny import fused_attention_forward

    channel = _Channel()
    if args.threads:
        # One thread by default: a thread pool waits for its slowest thread at every operation, so on a CPU
        # shared with other work a neighbour's load would stretch the steps far more, and unevenly.
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    config, unet, apply = random_unet(args, args.arch)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if variant != "official-emulated":
        CrossAttention.forward = fused_attention_forward
    generator = torch.Generator().manual_seed(0)
    height, width = parse_size(args.size)
    noise = torch.randn(1, 4, height // 8, width // 8, generator=generator).to(device)
    context = torch.randn(1, 77, config["context_dim"], generator=generator).to(device, dtype)
    cond = context
    if "adm_in_channels" in config:
        cond = {"crossattn": context, "vector": torch.randn(1, config["adm_in_channels"]).to(device, dtype)}
    timesteps = torch.full((1,), 981.0, device=device)
    memory = _Memory(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def clocks() -> tuple[float, float]:
        sync()
        return time.perf_counter(), time.process_time()

    def send_elapsed(since: tuple[float, float]) -> None:
        wall, cpu = clocks()
        channel.send(wall=wall - since[0], cpu=cpu - since[1])

    live = args.memory == "live"
    denoiser = Denoiser(unet=unet, apply=apply, timestep=981.0, checkpoint_blocks=variant == "initno-ckpt")
    request = ImageRequest(noise[0], 0, cond, [[2], [5]])
    never_valid = InitNOParams(max_rounds=1, steps_per_round=2, fallback_steps=0, cross_threshold=0.0)
    if live:
        # A short run of the same work first, so that lazy imports, thread pools and allocator caches
        # are not counted as a step's memory.
        optimize_noise(denoiser, [request], never_valid)
    baseline = memory.current()
    first = True

    def timed_steps(step) -> None:
        """Runs `step()` (its first call untimed), then once per "step" command, answering its seconds."""
        nonlocal first
        step()
        channel.send(ready=True)
        while True:
            channel.next_step()
            if first and live:
                memory.reset_peak()
            first = False
            start = clocks()
            step()
            send_elapsed(start)

    try:
        if variant == "bare":
            with frozen_parameters(unet), torch.enable_grad():
                latent = noise.clone().requires_grad_(True)
                timed_steps(lambda: torch.autograd.grad(apply(latent, timesteps, cond).float().square().mean(), latent))

        elif variant.startswith("initno"):
            # The optimiser runs its steps; after each UNet pass it waits for the parent's command. The
            # time from a command to the next pass's end is one full step: the backward of the pass
            # before, Adam, the KL projection and the forward. Pass 0 also learns where to stop the pass.
            started: list[tuple[float, float]] = []

            def progress(image, round_index, step, scores):
                nonlocal first
                if started:
                    send_elapsed(started.pop())
                elif step == 1:
                    channel.send(ready=True)
                if step == 0:
                    return
                channel.next_step()
                if first and live:
                    memory.reset_peak()
                first = False
                started.append(clocks())

            steps = never_valid.replace(steps_per_round=MAX_REPEATS + 3)  # the parent stops it sooner
            optimize_noise(denoiser, [request], steps, progress=progress)

        else:  # official-emulated
            log_var = torch.zeros(noise[0].shape, device=device, requires_grad=True)
            mu = torch.zeros(noise[0].shape, device=device, requires_grad=True)
            optimizer = torch.optim.Adam([log_var, mu], lr=1e-2, eps=1e-3)
            with AttentionCapture(unet, stop_early=False) as capture, torch.enable_grad():

                def official_step():
                    unet.zero_grad()
                    capture.run(apply, (noise[0] * torch.exp(0.5 * log_var) + mu)[None], timesteps, cond)
                    evaluation = evaluate_attention(
                        capture.cross_attention()[0], lambda p: capture.self_attention_rows(p)[0], [[2], [5]]
                    )
                    optimizer.zero_grad()
                    evaluation.joint.backward()
                    optimizer.step()

                timed_steps(official_step)
    except _Finish:
        pass
    channel.send(
        live_peak_bytes=memory.peak() - baseline,
        process_peak_bytes=memory.process_peak(),
        weight_bytes=sum(p.numel() * p.element_size() for p in unet.parameters()),
    )


# -- the parent: workers side by side, steps in turns -------------------------------------------------


class _Worker:
    def __init__(self, variant: str, args, memory: str):
        command = [sys.executable, "-m", "initno.bench", "--worker", variant, "--memory", memory]
        command += ["--size", args.size, "--arch", args.arch, "--device", args.device, "--dtype", args.dtype]
        command += ["--tiny"] * args.tiny + ["--threads", str(args.threads)]
        env = {**os.environ, **(TRIMMING_ALLOCATOR if memory == "live" else {})}
        if memory != "live":
            for name in TRIMMING_ALLOCATOR:
                env.pop(name, None)
        self.variant = variant
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            sys.exit(f"the {self.variant} worker failed (exit status {self.process.returncode}): see above")
        return json.loads(line)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def step(self) -> dict[str, float]:
        """One timed step: {"wall": seconds, "cpu": the worker's CPU seconds}."""
        self.send("step")
        return self.receive()

    def finish(self) -> dict:
        self.send("finish")
        result = self.receive()
        self.process.wait()
        return result


def turns(variants: list[str], repeats: int) -> list[list[str]]:
    """The order of the steps, round by round: ABBA, so that a load that rises or falls through a round
    weighs on each variant alike."""
    return [list(variants) if index % 2 == 0 else list(reversed(variants)) for index in range(repeats)]


def ratios(times: dict[str, list[float]], reference: str = "bare") -> dict[str, float]:
    """Per variant, the median over rounds of its time over the reference's time in the same round."""
    return {v: statistics.median(t / r for t, r in zip(ts, times[reference])) for v, ts in times.items()}


def _load() -> float:
    return os.getloadavg()[0]


def measure(variants: list[str], args) -> tuple[dict, dict, tuple[float, float]]:
    """Step times (per variant, per round: wall and CPU seconds) and process peaks from workers side by
    side, with the default allocator; then the live peaks, one worker at a time with the trimming one."""
    workers = []
    for variant in variants:  # started one at a time: their first steps' peaks do not overlap
        worker = _Worker(variant, args, "process")
        worker.receive()  # ready
        workers.append(worker)
    by_variant = {w.variant: w for w in workers}
    times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    load_before = _load()
    for order in turns(variants, args.repeats):
        for variant in order:
            times[variant].append(by_variant[variant].step())
    load_after = _load()
    results = {w.variant: w.finish() for w in workers}
    for variant in variants:
        # glibc returning freed memory at once costs page faults on every allocation: never timed.
        worker = _Worker(variant, args, "live")
        worker.receive()
        worker.step()
        results[variant]["live_peak_bytes"] = worker.finish()["live_peak_bytes"]
    return times, results, (load_before, load_after)


def report(variants: list[str], times: dict, results: dict, loads: tuple[float, float], args) -> str:
    model = f"{args.arch.upper()} UNet " + ("(tiny layout)" if args.tiny else "(full size)")
    height, width = parse_size(args.size)
    threads = args.threads or torch.get_num_threads()
    bare = results["bare"]
    # On a CPU a step's cost is the worker's own CPU time (one thread): a neighbour's load takes turns with
    # it on the cores, which stretches the wall time, not the CPU time. On a GPU: wall time.
    clock = "cpu" if args.device == "cpu" else "wall"
    chosen = {v: [step[clock] for step in steps] for v, steps in times.items()}
    wall = {v: statistics.median(step["wall"] for step in steps) for v, steps in times.items()}
    time_ratio = ratios(chosen)
    lines = [
        f"{model}, random weights, {width}×{height}, {args.dtype}, {args.device}, {threads} thread(s) per worker; "
        f"median of {args.repeats}, variants in turns (ABBA)",
        f"load average (1 min): {loads[0]:.2f} before, {loads[1]:.2f} after, on {os.cpu_count()} CPUs",
        f"UNet weights: {bare['weight_bytes'] / MIB:.0f} MiB (in the process peak, not in the live peak)",
        f"{'variant':<19}{clock + ' time':>10}{'wall time':>11}{'ratio':>7}"
        f"{'live peak':>12}{'ratio':>7}{'process peak':>14}{'ratio':>7}",
    ]
    for variant in variants:
        live, process = results[variant]["live_peak_bytes"], results[variant]["process_peak_bytes"]
        lines.append(
            f"{variant:<19}{statistics.median(chosen[variant]):>9.3f}s{wall[variant]:>10.3f}s{time_ratio[variant]:>7.2f}"
            f"{live / MIB:>8.0f} MiB{live / bare['live_peak_bytes']:>7.2f}"
            f"{process / MIB:>10.0f} MiB{process / bare['process_peak_bytes']:>7.2f}"
        )
    lines += [
        f"time: per step, the median; ratio: the median over rounds of the step's {clock} time over the bare "
        "step's in the same round",
        "live peak: one step in a further process, above the loaded model, glibc returning freed memory at once "
        "(GPU: peak allocated)",
        "process peak: the timing process's peak, default allocator, weights included (GPU: peak reserved)",
    ]
    if "official-emulated" in variants:
        lines.append("official-emulated: the official way of computing a step, emulated; not the official pipeline")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initno.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="sd1", help="UNet layout (default sd1)")
    parser.add_argument("--tiny", action="store_true", help="the layout in miniature instead of full size")
    parser.add_argument("--size", default=None, help="pixels, 1024 or WxH (default: the arch's, tiny: 128)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="UNet weights and activations")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 3, tiny: 20)")
    parser.add_argument("--checkpoint", action="store_true", help="also measure with transformer checkpointing")
    parser.add_argument("--official", action="store_true", help="also an emulation of the official step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1; 0: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--memory", choices=("live", "process"), default="live", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or str(128 if args.tiny else ARCHS[args.arch][2])
    args.repeats = args.repeats or (20 if args.tiny else 3)
    if not 1 <= args.repeats <= MAX_REPEATS:
        parser.error(f"--repeats must be between 1 and {MAX_REPEATS}, got {args.repeats}")
    if args.worker:
        _worker(args.worker, args)
        return 0
    height, width = parse_size(args.size)
    if height % 64 or width % 64:  # the WebUI resizes the UNet's skip connections for other sizes; ldm alone cannot
        parser.error(f"--size must be a multiple of 64 in each direction, got {width}×{height}")
    variants = ["bare", "initno"] + ["initno-ckpt"] * args.checkpoint + ["official-emulated"] * args.official
    times, results, loads = measure(variants, args)
    print(report(variants, times, results, loads, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
