"""The embedded tiny model: the real ldm `UNetModel` (the class A1111 loads for SD1/SD2) in a tiny
configuration with random weights, plus a toy text encoder. Used by the benchmarks' `--tiny` runs and by the
tests (the demo runs the trained miniature, `initno.miniature`). Nothing is downloaded.

Random weights need two adjustments to be a useful stand-in for a trained model:
- ldm zero-initialises every transformer's `proj_out` and the final `out` conv, which would make the
  attention invisible to the rest of the network; they get random weights here.
- With default init the attention is almost uniform (the official code scores such a model at a
  cross-attention loss of ~0.985 that barely moves), so the q/k projections are scaled by `sharpness`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SD1_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_checkpoint": False,
    "legacy": False,
}
"""SD1.x `unet_config` (v1-inference.yaml) with `use_checkpoint=False`, as A1111 loads it."""

SD2_UNET = {
    **SD1_UNET,
    "num_heads": -1,
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "context_dim": 1024,
}
"""SD2.x `unet_config` (v2-inference.yaml and v2-inference-v.yaml: the same UNet; eps or v prediction)."""

TINY_UNET = {
    **SD1_UNET,
    "model_channels": 32,
    "channel_mult": [1, 2, 2, 2],
    "num_heads": 2,
    "context_dim": 32,
}
"""The SD1 layout in miniature: same levels, same attention placement (5 layers at 1/4 of the latent)."""

TINY_SD2_UNET = {
    **SD2_UNET,
    "model_channels": 64,
    "channel_mult": [1, 2, 2, 2],
    "context_dim": 32,
}
"""The SD2 layout in miniature: linear projections in the transformers, 64-channel heads (1 or 2)."""

SDXL_UNET = {
    **SD2_UNET,
    "attention_resolutions": [4, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 2, 10],
    "context_dim": 2048,
    "adm_in_channels": 2816,
}
"""SDXL base's `network_config` (sd_xl_base.yaml): no attention at the first level, 2 and 10 transformer
blocks at the deeper two (10 in the middle), a 2048-wide context (CLIP-L 768 + OpenCLIP-G 1280) and the
2816-wide `vector` (pooled OpenCLIP-G + six size embeddings) added to the time embedding."""

TINY_SDXL_UNET = {
    **SDXL_UNET,
    "model_channels": 32,
    "transformer_depth": [0, 2, 3],
}
"""The SDXL layout in miniature: the same levels, 64-channel heads (1 or 2), stacks deeper at the last
level, the full-width context and vector."""


def require_ldm():
    try:
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedded model needs the `ldm` package: pip install --no-deps stable-diffusion-sdkit==2.1.5 "
            "einops omegaconf (or run `make demo`, which installs everything)"
        ) from error
    return UNetModel


def build_unet(config: dict | None = None, *, seed: int = 0, sharpness: float = 4.0) -> nn.Module:
    """A random-weight ldm UNet (default: `TINY_UNET`) in eval mode, reproducible from `seed`.

    ldm's `UNetModel` takes one transformer depth for all levels and no `vector`; for the SDXL layout
    the deeper stacks and sgm's `label_emb` are added here with ldm's own parts (see `_sgm_layout`)."""
    unet_class = require_ldm()
    config = dict(config or TINY_UNET)
    depths = config.pop("transformer_depth", 1)
    vector_width = config.pop("adm_in_channels", None)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = unet_class(**config, transformer_depth=1)
        if depths != 1 or vector_width:
            _sgm_layout(unet, config, depths, vector_width)
        for name, parameter in unet.named_parameters():
            if parameter.dim() > 1 and not parameter.abs().sum():
                nn.init.normal_(parameter, std=0.02 if "proj_out" in name else 0.05)
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.endswith(("attn1", "attn2")):
                    module.to_q.weight.mul_(sharpness)
                    module.to_k.weight.mul_(sharpness)
    finally:
        torch.random.set_rng_state(generator_state)
    return unet.eval()


def _sgm_layout(unet: nn.Module, config: dict, depths: list[int] | int, vector_width: int | None) -> None:
    """Per-level transformer depths (the middle takes the last) and a `vector` input, as sgm builds them."""
    from ldm.modules.attention import BasicTransformerBlock

    level_of_width = {config["model_channels"] * mult: level for level, mult in enumerate(config["channel_mult"])}
    if isinstance(depths, list) and len(level_of_width) != len(depths):
        raise ValueError("per-level transformer depths need a distinct channel width per level")
    for container in unet.modules():
        blocks = getattr(container, "transformer_blocks", None)
        if blocks is None:
            continue
        depth = depths[level_of_width[container.in_channels]] if isinstance(depths, list) else depths
        first = blocks[0]
        for _ in range(depth - len(blocks)):
            width = first.attn1.to_q.out_features
            blocks.append(
                BasicTransformerBlock(
                    width, first.attn1.heads, width // first.attn1.heads,
                    context_dim=first.attn2.to_k.in_features, checkpoint=False,
                )
            )  # fmt: skip
    unet.context_copies = max(depths) if isinstance(depths, list) else depths
    if vector_width:
        embedding_width = config["model_channels"] * 4
        unet.num_classes = "sequential"  # ldm's forward then adds label_emb(y) to the time embedding
        unet.label_emb = nn.Sequential(
            nn.Linear(vector_width, embedding_width), nn.SiLU(), nn.Linear(embedding_width, embedding_width)
        )


def unet_context(unet: nn.Module, context: torch.Tensor):
    """The context argument for `unet`: ldm's `SpatialTransformer` reads one context per transformer
    block (sgm repeats a single one), so deeper stacks get the same tensor once per block."""
    copies = getattr(unet, "context_copies", 1)
    return [context] * copies if copies > 1 else context


@dataclass
class TinyTextEncoder:
    """Token ids -> context (1, 77·k, dim): a fixed random embedding per token id plus a position
    embedding. Enough for attention to tell tokens apart; no language understanding."""

    dim: int = 32
    seed: int = 0
    vocab_size: int = 49408

    def __post_init__(self):
        generator = torch.Generator().manual_seed(self.seed)
        self.tokens = torch.randn(self.vocab_size, self.dim, generator=generator)
        self.positions = 0.1 * torch.randn(77, self.dim, generator=generator)

    def __call__(self, chunks: list[list[int]]) -> torch.Tensor:
        encoded = [self.tokens[torch.tensor(chunk)] + self.positions for chunk in chunks]
        return torch.cat(encoded)[None]


def apply_unet(unet: nn.Module):
    """The model call in A1111's `apply_model(x, t, cond)` shape for a bare ldm UNet."""

    def apply(latent: torch.Tensor, timesteps: torch.Tensor, cond) -> torch.Tensor:
        if isinstance(cond, dict):  # SDXL: `crossattn` + `vector`
            return unet(latent, timesteps=timesteps, context=unet_context(unet, cond["crossattn"]), y=cond["vector"])
        return unet(latent, timesteps=timesteps, context=unet_context(unet, cond))

    return apply


def fused_attention_forward(module, x, context=None, mask=None, **kwargs):
    """ldm's CrossAttention computed by the fused kernel: the same function, faster and lighter (the host's
    `sdp` optimisation installs such a forward too), for layers whose maps nobody reads; the module and its
    weights stay ldm's own. Assign it to the class, or bind it to one module."""
    heads, source = module.heads, x if context is None else context
    q, k, v = (
        t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (module.to_q(x), module.to_k(source), module.to_v(source))
    )
    out = F.scaled_dot_product_attention(q, k, v, scale=module.scale)
    return module.to_out(out.transpose(1, 2).flatten(2))
