"""Command line: `python -m initno demo | tokens | bench`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .params import InitNOParams
from .subjects import SubjectError


def _demo(args) -> int:
    import torch

    from .offline import read_prompt
    from .optimize import Denoiser, ImageRequest, optimize_noise
    from .tiny import TINY_UNET, TinyTextEncoder, apply_unet, build_unet

    read = read_prompt(args.prompt, args.subjects)
    if not read.subjects:
        print("no subjects found in the prompt; name them with --subjects", file=sys.stderr)
        return 2
    unet = build_unet(seed=0)
    cond = TinyTextEncoder(dim=TINY_UNET["context_dim"])([chunk.tokens for chunk in read.chunks])
    latent_size = args.size // 8
    noise = torch.randn(4, latent_size, latent_size, generator=torch.Generator().manual_seed(args.seed))
    params = InitNOParams(max_rounds=args.rounds, steps_per_round=args.steps, fallback_steps=args.fallback)

    print(f"model: ldm UNetModel, SD1 layout in miniature, random weights; {args.size}×{args.size}, seed {args.seed}")
    print(f"prompt: {args.prompt!r}")
    for subject in read.subjects:
        chosen = " (chosen automatically)" if subject.auto else ""
        print(f"subject {subject.text!r}: token positions {list(subject.positions)}{chosen}")
    print(f"valid when cross < {params.cross_threshold} and self < {params.conflict_threshold}")

    def progress(image, round_index, step, scores):
        phase = "fallback" if round_index == params.max_rounds else f"round {round_index + 1}/{params.max_rounds}"
        print(
            f"  {phase:<12} step {step + 1:>2}  cross {scores.cross:.4f}  self {scores.conflict:.4f}"
            f"  clean {scores.clean:.4f}  joint {scores.joint:.4f}"
        )

    denoiser = Denoiser(unet=unet, apply=apply_unet(unet), timestep=981)
    request = ImageRequest(noise, args.seed, cond, [list(s.positions) for s in read.subjects])
    (result,) = optimize_noise(denoiser, [request], params, progress=progress)
    outcome = "reached the valid region" if result.valid else "did not reach the valid region"
    print(
        f"{outcome} after {result.rounds} round(s){' and the fallback run' if result.fallback else ''}, "
        f"{result.steps} UNet passes; cross {result.initial.cross:.4f} -> {result.final.cross:.4f}, "
        f"self {result.initial.conflict:.4f} -> {result.final.conflict:.4f}; KL {result.kl:.2e}"
    )
    try:
        from .diagnostics import render_diagnostics
    except ImportError as error:  # matplotlib: in every WebUI install, and in requirements-dev.txt
        print(f"no diagnostic image: {error}", file=sys.stderr)
        return 0
    diagnostics = render_diagnostics(result, [s.text for s in read.subjects], params)
    if diagnostics is not None:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        diagnostics.image.save(output)
        print(f"diagnostic image: {output}")
    return 0


def _tokens(args) -> int:
    from .offline import read_prompt

    report = read_prompt(
        args.prompt,
        args.subjects,
        steps=args.steps,
        emphasis=not args.no_emphasis,
        comma_backtrack=args.comma_backtrack,
    )
    print(json.dumps(report.as_json(), ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initno", description="InitNO: initial noise optimisation.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="optimise the noise of the embedded tiny random model, round by round")
    demo.add_argument("--prompt", default="a cat and a dog")
    demo.add_argument("--subjects", default="", help="comma-separated; empty: chosen from the prompt")
    demo.add_argument("--seed", type=int, default=4)
    demo.add_argument("--size", type=int, default=256, help="image size in pixels (the latent is 1/8)")
    defaults = InitNOParams()
    demo.add_argument("--rounds", type=int, default=defaults.max_rounds)
    demo.add_argument("--steps", type=int, default=defaults.steps_per_round)
    demo.add_argument("--fallback", type=int, default=defaults.fallback_steps)
    demo.add_argument(
        "--output", default="outputs/initno-demo.png", help="where to write the diagnostic image (PNG; folders created)"
    )

    tokens = commands.add_parser("tokens", help="print the token positions of a prompt's subjects as JSON")
    tokens.add_argument("prompt")
    tokens.add_argument("--subjects", default="", help="comma-separated words or #positions; empty: automatic")
    tokens.add_argument("--steps", type=int, default=20, help="sampling steps (for prompt editing)")
    tokens.add_argument("--comma-backtrack", type=int, default=20, help="the WebUI's comma padding backtrack setting")
    tokens.add_argument("--no-emphasis", action="store_true", help="as with the WebUI's emphasis mode 'None'")

    commands.add_parser("bench", help="time and memory of one step against a bare UNet pass (see initno.bench)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return _demo(args) if args.command == "demo" else _tokens(args)
    except (SubjectError, ValueError, ImportError, FileNotFoundError) as error:
        print(f"initno: {error}", file=sys.stderr)
        return 2
