"""Shared test helpers (importable from tests: `pythonpath` includes tests/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from initno.optimize import ImageRequest

REPO = Path(__file__).resolve().parents[1]

# "a cat and a dog" as the SD1 CLIP tokenizer sees it: start, a, cat, and, a, dog, end + padding.
CAT_AND_DOG = [49406, 320, 2368, 537, 320, 1929] + [49407] * 71

CAPTURED_AT_16 = {
    f"{block}.1.transformer_blocks.0.{attn}"
    for block in ("input_blocks.7", "input_blocks.8", "output_blocks.3", "output_blocks.4", "output_blocks.5")
    for attn in ("attn1", "attn2")
}
"""The SD1 layers at 1/4 of the latent: the 5 self- and 5 cross-attention modules the method reads."""


def seeded_noise(seed: int, size: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """A (4, h, w) initial noise, the same for a seed in every test."""
    return torch.randn(4, *size, generator=torch.Generator().manual_seed(seed))


def image_request(cond, seed=1, subjects=((2,), (5,)), size=(16, 16)) -> ImageRequest:
    """One image's request: "a cat and a dog" with cat (2) and dog (5) as the subjects."""
    return ImageRequest(noise=seeded_noise(seed, size), seed=seed, cond=cond, subjects=[list(s) for s in subjects])


def instance_forwards(module: torch.nn.Module) -> dict[str, object]:
    """Every module's instance-level `forward` (absent for most): what a capture must leave as found."""
    return {name: m.__dict__.get("forward") for name, m in module.named_modules()}


def run_cli(*args: str, module: str = "initno", timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m initno ARGS` (or another module) as a user runs it, from the repository's root."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
