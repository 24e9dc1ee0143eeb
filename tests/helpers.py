"""Shared test helpers (importable from tests: `pythonpath` includes tests/)."""

from __future__ import annotations

import torch

# "a cat and a dog" as the SD1 CLIP tokenizer sees it: start, a, cat, and, a, dog, end + padding.
CAT_AND_DOG = [49406, 320, 2368, 537, 320, 1929] + [49407] * 71

CAPTURED_AT_16 = {
    f"{block}.1.transformer_blocks.0.{attn}"
    for block in ("input_blocks.7", "input_blocks.8", "output_blocks.3", "output_blocks.4", "output_blocks.5")
    for attn in ("attn1", "attn2")
}
"""The SD1 layers at 1/4 of the latent: the 5 self- and 5 cross-attention modules the method reads."""


def instance_forwards(module: torch.nn.Module) -> dict[str, object]:
    """Every module's instance-level `forward` (absent for most): what a capture must leave as found."""
    return {name: m.__dict__.get("forward") for name, m in module.named_modules()}
