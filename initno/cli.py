"""Command line: `python -m initno demo | eval | compare | study | train | tokens | bench`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .params import InitNOParams
from .subjects import SubjectError


def _demo(args) -> int:
    from .miniature.demo import run_demo
    from .selection import LookaheadParams

    params = InitNOParams(max_rounds=args.rounds, steps_per_round=args.steps, fallback_steps=args.fallback)
    lookahead = LookaheadParams(candidates=args.candidates, steps=args.lookahead_steps)
    weights = Path(args.weights) if args.weights else None
    return run_demo(args.prompt, args.seed, params, Path(args.output), weights, lookahead, args.thresholds)


def _eval(args) -> int:
    import time

    from .miniature import evaluate
    from .miniature.model import Miniature

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    # bad values fail now, not after the model has loaded
    settings = evaluate.EvalSettings.from_assignments(args.set or [], args.n, not args.fp32_sampling)
    evaluate.check_methods(methods)
    model = Miniature.load(args.weights or args.model)
    split = evaluate.splits_of(model)[args.split]
    prompts = evaluate.read_prompts(args.prompts) if args.prompts else list(split.prompts)
    seeds = evaluate.parse_seeds(args.seeds) if args.seeds else list(split.seeds)
    log = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    began = time.perf_counter()
    benchmark = evaluate.Benchmark(model, settings, log)
    samples = benchmark.run(prompts, seeds, methods)
    minutes = (time.perf_counter() - began) / 60
    best_of = benchmark.best_of() if "best-of-n" in methods else None
    report = evaluate.report(samples, methods, len(prompts), len(seeds), settings, benchmark.thresholds, best_of,
                             model.design.name)  # fmt: skip
    report["minutes"] = round(minutes, 2)
    if args.report:
        evaluate.write_json(Path(args.report), report)
    if args.json:
        print(json.dumps(report))
    else:
        source = f"{args.split} split" if not (args.prompts or args.seeds) else "chosen prompts/seeds"
        precision = "bf16" if settings.bf16_sampling else "fp32"
        print(f"{model.design.name}: {len(prompts)} prompts × {len(seeds)} seeds ({source}), DDIM {evaluate.STEPS} "
              f"steps ({precision}), guidance {evaluate.GUIDANCE}; {minutes:.1f} min")  # fmt: skip
        if benchmark.thresholds:
            print(f"thresholds: cross {benchmark.thresholds.cross:.3f}, conflict {benchmark.thresholds.conflict:.3f} "
                  f"({benchmark.thresholds.source})")  # fmt: skip
        if report["changed_params"]:
            print("changed from the defaults:", report["changed_params"])
        print(evaluate.format_table(report["rows"]))
    if args.grid:
        grid = Path(args.grid)
        grid.parent.mkdir(parents=True, exist_ok=True)
        evaluate.comparison_grid(samples, methods).save(grid)
        print(f"grid: {grid}", file=sys.stderr)
    return 0


def _compare(args) -> int:
    from .miniature import evaluate, reports

    pooled = reports.pool(reports.read(args.reports))
    rows = reports.compare(pooled, args.against)
    if args.json:
        print(json.dumps({"rows": rows, "methods": pooled.methods, "best_of": pooled.best_of}))
        return 0
    counts = ", ".join(f"{row['method']} {row['images']}" for row in rows)
    print(f"{len(args.reports)} reports pooled; images: {counts}")
    print(evaluate.format_table(rows, args.against))
    return 0


def _study(args) -> int:
    from .miniature import evaluate, study
    from .miniature.model import Miniature

    output = Path(args.output)
    if args.replay:
        records = json.loads(output.read_text())
    else:
        model = Miniature.load(args.weights or args.model)
        split = evaluate.splits_of(model)["study"]
        seeds = evaluate.parse_seeds(args.seeds) if args.seeds else list(split.seeds)
        world_ = evaluate.Miniworld(model, bf16_sampling=not args.fp32_sampling)
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        records = study.collect(world_, split.prompts, seeds, args.candidates, log=log)
        study.write(output, records)
    print(f"study split: {len({r['prompt'] for r in records})} prompts × {len({r['seed'] for r in records})} seeds")
    print(study.table(records))
    print(study.lookahead_table(records))
    return 0


def _train(args) -> int:
    from .miniature.train import train

    return train(args)


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


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    from .miniature.model import DEFAULT_DESIGN, DESIGNS

    parser.add_argument("--model", choices=list(DESIGNS), default=DEFAULT_DESIGN, help="which shipped miniature")
    parser.add_argument("--weights", default=None, help="a miniature weights file instead (its design is inside)")
    parser.add_argument(
        "--fp32-sampling", action="store_true", help="sample the images in float32 (the protocol before bf16)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The commands and their options; each subcommand's `run` is the function that carries it out."""
    from .miniature import DEMO_PROMPT, DEMO_SEED, EVAL_METHODS
    from .miniature.train import add_arguments
    from .selection import LookaheadParams

    parser = argparse.ArgumentParser(prog="python -m initno", description="InitNO: initial noise optimisation.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="InitNO on the miniature model: plain and optimised images, diagnostics")
    demo.add_argument("--prompt", default=DEMO_PROMPT, help="'a <colour> <shape> and a <colour> <shape>'")
    demo.add_argument("--seed", type=int, default=DEMO_SEED)
    fast = LookaheadParams()
    demo.add_argument("--candidates", type=int, default=fast.candidates, help="Fast: noises compared")
    demo.add_argument("--lookahead-steps", type=int, default=fast.steps, help="Fast: sampling steps before scoring")
    defaults = InitNOParams()
    demo.add_argument("--rounds", type=int, default=defaults.max_rounds)
    demo.add_argument("--steps", type=int, default=defaults.steps_per_round)
    demo.add_argument("--fallback", type=int, default=defaults.fallback_steps)
    demo.add_argument(
        "--thresholds", choices=["calibrated", "official"], default="calibrated",
        help="InitNO's validity thresholds: calibrated to the model (the WebUI's default) or SD1.4's",
    )  # fmt: skip
    demo.add_argument("--weights", default=None, help="miniature weights (default: the shipped ones)")
    demo.add_argument("--output", default="outputs/initno-demo.png", help="where to write the picture (PNG)")

    evaluation = commands.add_parser("eval", help="the subject-presence benchmark on the miniature model")
    split_help = "prompts and seeds: choose on study, report on confirm (see evaluate.Split)"
    evaluation.add_argument("--split", choices=["study", "confirm"], default="study", help=split_help)
    evaluation.add_argument("--prompts", default=None, help="a file, one prompt per line (instead of the split's)")
    evaluation.add_argument("--seeds", default=None, help="e.g. 0-7 or 1,5,9 (instead of the split's)")
    evaluation.add_argument(
        "--methods", default="plain,best-of-n,lookahead", help="comma-separated, any of " + ", ".join(EVAL_METHODS)
    )
    evaluation.add_argument("--n", type=int, default=None, help="best-of-n's n (default: equal passes to lookahead)")
    _model_arguments(evaluation)
    evaluation.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter other than its default: InitNO's (e.g. max_rounds=3; its cross_threshold and "
        "conflict_threshold with thresholds=official, else calibrated ones are used, as in the WebUI), "
        "selection's (candidates, polish_steps, patience), Fast's (lookahead_candidates, lookahead_steps), the "
        "guidance's (guidance_step_scale, guidance_guided_fraction, guidance_max_refinement) or the calibration "
        "quantile (repeatable)",
    )
    evaluation.add_argument("--grid", default="outputs/initno-eval.png", help="before/after grid PNG ('' for none)")
    evaluation.add_argument("--json", action="store_true", help="print the table and every verdict as JSON")
    evaluation.add_argument("--report", default="", help="also write that JSON to this file")

    comparing = commands.add_parser(
        "compare", help="pool saved eval reports (eval --report) and compare their methods on the same images"
    )
    comparing.add_argument("reports", nargs="+", help="eval reports (JSON) of one model: other seeds, other methods")
    comparing.add_argument(
        "--against", default=None, help="also compare every method with this one (e.g. lookahead, the WebUI's Fast)"
    )
    comparing.add_argument("--json", action="store_true", help="print the rows as JSON")

    studying = commands.add_parser("study", help="which first-pass scores predict a good image (study split only)")
    studying.add_argument("--seeds", default="0-11", help="seeds of the study split to use")
    studying.add_argument("--candidates", type=int, default=8, help="noises per seed, each scored and sampled")
    _model_arguments(studying)
    studying.add_argument("--output", default="outputs/initno-study.json", help="every noise's scores and verdict")
    studying.add_argument("--replay", action="store_true", help="print the table from --output without sampling")

    training = commands.add_parser("train", help="train a miniature model (1.5 to 2 hours on 2 CPU cores)")
    add_arguments(training)

    tokens = commands.add_parser("tokens", help="print the token positions of a prompt's subjects as JSON")
    tokens.add_argument("prompt")
    tokens.add_argument("--subjects", default="", help="comma-separated words or #positions; empty: automatic")
    tokens.add_argument("--steps", type=int, default=20, help="sampling steps (for prompt editing)")
    tokens.add_argument("--comma-backtrack", type=int, default=20, help="the WebUI's comma padding backtrack setting")
    tokens.add_argument("--no-emphasis", action="store_true", help="as with the WebUI's emphasis mode 'None'")

    commands.add_parser("bench", help="time and memory of one step against a bare UNet pass (see initno.bench)")
    for name, run in (("demo", _demo), ("eval", _eval), ("compare", _compare), ("study", _study), ("train", _train),
                      ("tokens", _tokens)):  # fmt: skip
        commands.choices[name].set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":  # its own parser (python -m initno.bench)
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except (SubjectError, ValueError, ImportError, FileNotFoundError) as error:
        print(f"initno: {error}", file=sys.stderr)
        return 2
