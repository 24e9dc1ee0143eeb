"""Training the miniature (not run in CI): `python -m initno train` reproduces the shipped weights.

Seeded end to end: the weights' initialisation, every batch (rendered afresh from `seed` and the step
number), the timesteps, the noise and the caption dropout. On the same machine and thread count the run
is bit-for-bit repeatable; another CPU may round differently.

Each step renders a batch, encodes the captions (10 % replaced by the empty prompt, for classifier-free
guidance; with the design's own text encoder, trained alongside, or a borrowed one, frozen), noises the
images at uniform timesteps and regresses the noise (eps-prediction, MSE), with AdamW, a short warm-up and
a cosine decay over `decay_steps` (then the floor learning rate, so a run can be extended past its decay
and stay reproducible by one command). The weights shipped are an exponential moving
average of the trained ones. A checkpoint is written every `--save-every` steps; `--resume` continues from it exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

CAPTION_DROPOUT = 0.1
WARMUP_STEPS = 100


def _learning_rate(step: int, decay_steps: int, peak: float) -> float:
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, decay_steps - WARMUP_STEPS))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _same(state: dict, other: dict) -> bool:
    import torch

    return state.keys() == other.keys() and all(
        state[k].shape == other[k].shape and torch.equal(state[k], other[k]) for k in state
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train(args) -> int:
    import torch
    import torch.nn.functional as F

    from . import world
    from .model import Miniature, alphas_cumprod, design_of, use_fused_attention

    design = design_of(args.model)
    for name, value in design.training.items():  # the design's defaults where the command line is silent
        if getattr(args, name) is None:
            setattr(args, name, value)
    decay_steps = args.decay_steps or args.steps
    output = Path(args.output or design.weights)
    torch.set_num_threads(args.threads)
    borrowed = Miniature.load(design.text_encoder).text_encoder.state_dict() if design.text_encoder else None
    torch.manual_seed(args.seed)
    model = Miniature.build(seed=args.seed, design=design.name)
    average = Miniature.build(seed=args.seed, design=design.name)  # the EMA copy, what ships
    average.eval()
    if borrowed is not None:  # frozen: only the UNet learns
        model.text_encoder.load_state_dict(borrowed)
        average.text_encoder.load_state_dict(borrowed)
        model.text_encoder.eval().requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    use_fused_attention(model.unet)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    schedule = alphas_cumprod().float()
    generator = torch.Generator().manual_seed(args.seed)
    checkpoint = Path(args.checkpoint or f"outputs/{design.name}-train.pt")
    log_path = Path(args.log or f"outputs/{design.name}-train-log.json")
    start, log = 0, []
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if borrowed is not None and not _same(state["text"], borrowed):
            raise SystemExit(
                f"{checkpoint} was not trained against {design.text_encoder}'s text encoder; move it away to start anew"
            )
        model.unet.load_state_dict(state["unet"])
        model.text_encoder.load_state_dict(state["text"])
        average.unet.load_state_dict(state["ema_unet"])
        average.text_encoder.load_state_dict(state["ema_text"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, log = state["step"], state["log"]
        print(f"resumed at step {start}")
    averaged = [*average.unet.parameters(), *(average.text_encoder.parameters() if borrowed is None else [])]
    ids_of: dict[str, torch.Tensor] = {}
    began, window = time.time(), []
    for step in range(start, args.steps):
        images, captions = world.training_batch(args.seed * 1_000_003 + step, args.batch, design.triple_share)
        drop = torch.rand(len(captions), generator=generator) < CAPTION_DROPOUT
        captions = ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]
        for caption in set(captions) - ids_of.keys():
            ids_of[caption] = model.token_ids([caption])[0]
        x0 = design.to_model_space(images)
        timesteps = torch.randint(0, len(schedule), (len(captions),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        signal = schedule[timesteps].view(-1, 1, 1, 1)
        noisy = signal.sqrt() * x0 + (1 - signal).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, decay_steps, args.lr)
        ids = torch.stack([ids_of[c] for c in captions])
        own = borrowed is None  # a borrowed encoder runs as it was trained: float32, and it does not learn
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16 and own), torch.set_grad_enabled(own):
            context = model.text_encoder(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            prediction = model.unet(noisy, timesteps=timesteps, context=context)
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(averaged, trained, 1 - decay)
        window.append(loss.item())
        if (step + 1) % args.log_every == 0:
            elapsed = time.time() - began
            log.append({"step": step + 1, "loss": sum(window) / len(window), "seconds": round(elapsed, 1)})
            window = []
            print(f"step {step + 1}/{args.steps}  loss {log[-1]['loss']:.4f}  {elapsed / 60:.1f} min", flush=True)
            log_path.write_text(json.dumps(log))
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            torch.save(
                {
                    "unet": model.unet.state_dict(),
                    "text": model.text_encoder.state_dict(),
                    "ema_unet": average.unet.state_dict(),
                    "ema_text": average.text_encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "step": step + 1,
                    "log": log,
                },
                checkpoint,
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "checkpoint", "log", "resume")}
    if design.text_encoder:
        settings["text_encoder"] = f"{design.text_encoder} (sha256 {sha256(design_of(design.text_encoder).weights)})"
    if design.name == "miniature":  # its record predates designs: the same metadata, the same file hash
        settings = {k: v for k, v in settings.items() if k not in ("model", "bf16", "decay_steps")}
    average.save(output, {"training": json.dumps(settings)})
    print(f"weights: {output} ({output.stat().st_size / 2**20:.1f} MiB), sha256 {sha256(output)}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="miniature", help="which miniature (its design: initno.miniature.model)")
    parser.add_argument("--steps", type=int, default=None, help="default: the design's")
    parser.add_argument(
        "--decay-steps", type=int, default=None, help="cosine decay length (default: the design's, else --steps)"
    )
    parser.add_argument("--batch", type=int, default=None, help="default: the design's")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: the design's)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    parser.add_argument("--output", default=None, help="default: the design's weights file")
    parser.add_argument("--checkpoint", default=None, help="resumable training state (default: outputs/NAME-train.pt)")
    parser.add_argument("--log", default=None, help="the loss curve, as JSON (default: outputs/NAME-train-log.json)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
