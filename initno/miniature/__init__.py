"""The miniature: a text-to-image world small enough to train on a CPU, and a model trained on it.

InitNO can only be judged on a model that draws the subjects of its prompt. No pretrained weights can be
downloaded where this project is built, so it trains its own: coloured shapes on a grey ground
(`world`), a tiny SD1-layout model over CLIP's tokens (`model`), its training (`train`), a detector that
says which subjects an image shows (`detect`), the DDIM sampler (`sampling`), the benchmark (`evaluate`,
its statistics `stats`, saved reports pooled and compared `reports`), the selection study (`study`) and
the demo (`demo`). The weights it was trained to ship in `weights/`.

It is used by the command line (`demo`, `eval`, `compare`, `study`, `train`) and the behaviour tests, never
by the WebUI glue.
"""

from pathlib import Path

WEIGHTS = Path(__file__).with_name("weights") / "miniature.safetensors"
WEIGHTS_SHA256 = {
    "miniature": "c195e5cff97f1a028075504b3afcfede34aa0527398a2c8cfda2fd78271c38fd",
    "miniature-16": "f658458645a7b4a4d6af0d55585c939e57686e845474c003230aaea253abcbe9",
}
"""Per design, what `python -m initno train --model NAME` (its defaults, 2 torch threads) writes; the records:
weights/TRAINING.md, weights/TRAINING-miniature-16.md."""
DEMO_PROMPT = "a red circle and a yellow square"
DEMO_SEED = 9
"""The demo's defaults: see `initno.miniature.demo` for how they were chosen."""
EVAL_METHODS = ("plain", "best-of-n", "lookahead", "select", "initno", "ae", "initno+", "select+", "lookahead+")
"""The rows of `python -m initno eval` (see `initno.miniature.evaluate`); the WebUI's Fast is `lookahead`."""
