"""The miniature text-to-image model: the real ldm `UNetModel` in the SD1 layout, in miniature, conditioned
on a small causal text encoder over CLIP's BPE tokens with CLIP's 77 positions.

- Tokens: the prompt is read exactly as for SD1 (`initno.offline.read_prompt`: start token, the BPE
  tokens, end token, padded with the end token to 77), so a subject sits at the same position as in the
  WebUI. The encoder knows the few dozen token ids of its world; any other id shares one "unknown" row.
- Pixel space, made SD-like by a fixed, exactly invertible transform: the 64×64 RGB image in [-1, 1],
  scaled by `DATA_SCALE` (so the data has about unit variance, as SD's scaled latents), then (the first
  miniature) folded into a 12×32×32 tensor by `pixel_unshuffle`, as SD's VAE folds 8×8 blocks into 4
  channels, or (`miniature-16`) given to the UNet as it is, 3×64×64. InitNO reads the 1/4 level: 8×8 maps
  on the first, 16×16 (SD1's at 512²) on the second. `Design` holds what differs.
- UNet: SD1's levels and attention placement at 1/4 width per head-count: 4 levels, 2 res blocks each,
  transformers at some of SD1's places (none at full size, dropped to fit CPU training), none at the
  deepest level but in the middle block. So the blocks InitNO reads are SD1's own: `input_blocks.7/8`,
  `output_blocks.3/4/5`.
- eps-prediction on SD's scaled-linear schedule (β from 0.00085 to 0.012, 1000 steps).
"""

from __future__ import annotations

import contextlib
import json
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clip_bpe import ClipTokenizer
from ..subjects import CHUNK_LENGTH
from ..tiny import fused_attention_forward, require_ldm
from . import WEIGHTS, world

DATA_SCALE = 4.0
"""The renders' standard deviation in [-1, 1] is 0.23; ×4 gives about unit variance, like SD's latents."""
TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
TEXT_CONFIG = {"width": 64, "layers": 2, "heads": 4}


@dataclass(frozen=True)
class Design:
    """What tells one miniature from another: its UNet, how pixels map to its input, its world's captions
    and how it was trained (the defaults of `python -m initno train --model NAME`)."""

    name: str
    fold: int
    """`pixel_unshuffle` factor: 64×64×3 pixels <-> (64/fold)²×(3·fold²) model space."""
    attention_resolutions: tuple[int, ...]
    """Where the UNet has transformers, as downsampling factors of its input (4: the level InitNO reads)."""
    triple_share: float
    """Share of training images with three subjects (their captions use a comma)."""
    training: dict
    """`train` defaults: batch, steps, decay_steps (if shorter than steps), bf16 (autocast on CPUs with bf16
    units: about 1.6× faster)."""
    text_encoder: str | None = None
    """The miniature whose shipped text encoder this one conditions on, frozen (as SD conditions on a frozen,
    pretrained CLIP); None: its own, trained with the UNet."""

    @property
    def unet(self) -> dict:
        """ldm `UNetModel` arguments (in this order: the first miniature's file records them as JSON)."""
        channels = 3 * self.fold**2
        return {
            "image_size": world.IMAGE_SIZE // self.fold,
            "in_channels": channels,
            "out_channels": channels,
            "model_channels": 32,
            "attention_resolutions": list(self.attention_resolutions),
            "num_res_blocks": 2,
            "channel_mult": [1, 2, 2, 2],
            "num_heads": 2,
            "use_spatial_transformer": True,
            "transformer_depth": 1,
            "context_dim": 64,
            "use_checkpoint": False,
            "legacy": False,
        }

    @property
    def weights(self) -> Path:
        return WEIGHTS.with_name(f"{self.name}.safetensors")

    @property
    def words(self) -> list[str]:
        """The words its text encoder knows (a borrowed encoder knows its own miniature's: others, such as
        the comma of three-subject captions, read as its one "unknown" token)."""
        if self.text_encoder:
            return design_of(self.text_encoder).words
        return ["a", "and", "next", "to", "with", *([","] if self.triple_share else []), *world.COLOURS, *world.SHAPES]

    def to_model_space(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 images -> (N, 3·fold², H/fold, W/fold) float32, exactly invertible."""
        pixels = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return F.pixel_unshuffle(pixels * DATA_SCALE, self.fold)

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """Model space -> (N, H, W, 3) uint8 (clipped to the image range)."""
        pixels = F.pixel_shuffle(x.detach().float().cpu(), self.fold) / DATA_SCALE
        return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


DESIGNS = {
    d.name: d
    for d in (
        # The first: 64×64 pixels folded 2× to 32×32×12 (as SD's VAE folds 8×8 blocks into 4 channels);
        # attention at 1/2 and 1/4, so InitNO reads 8×8 maps. Pairs only.
        Design(
            "miniature",
            fold=2,
            attention_resolutions=(4, 2),
            triple_share=0.0,
            training={"batch": 64, "steps": 4000, "bf16": False},
        ),
        # The second, closer to SD1 at 512²: the 64×64×3 pixels are the UNet's input unfolded, so the 1/4
        # level is 16×16 (256 positions, SD1's `input_blocks.7/8`, `output_blocks.3/4/5`); attention only
        # there and in the middle block (at 1/2 too would double training time); three-subject scenes.
        # Its UNet learns against the first miniature's text encoder, frozen, as SD's against CLIP: trained
        # with its own, it did not draw yellow (weights/TRAINING-miniature-16.md).
        Design(
            "miniature-16",
            fold=1,
            attention_resolutions=(4,),
            triple_share=0.25,
            training={"batch": 32, "steps": 5000, "bf16": True},
            text_encoder="miniature",
        ),
    )
}
DEFAULT_DESIGN = "miniature"


def design_of(name: str) -> Design:
    """The miniature called `name`; ValueError naming the known ones otherwise."""
    try:
        return DESIGNS[name]
    except KeyError:
        raise ValueError(f"unknown miniature {name!r}; miniatures: {', '.join(DESIGNS)}") from None


def world_vocabulary(tokenizer: ClipTokenizer, words: Sequence[str] | None = None) -> list[int]:
    """The CLIP ids of every word the world's captions use, plus the start and end tokens."""
    ids = {tokenizer.start_id, tokenizer.end_id}
    for word in words or DESIGNS[DEFAULT_DESIGN].words:
        ids.update(tokenizer.encode(word))
    return sorted(ids)


class TextEncoder(nn.Module):
    """CLIP-like: token + position embeddings, pre-norm transformer layers with a causal mask (each token
    sees the ones before it, as in CLIP, so "circle" in "a red circle" carries its colour), final norm."""

    def __init__(self, token_ids: list[int], width: int, layers: int, heads: int):
        super().__init__()
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.int64))
        lookup = torch.zeros(max(token_ids) + 1, dtype=torch.int64)  # 0: the "unknown" row
        lookup[self.token_ids] = torch.arange(1, len(token_ids) + 1)
        self.register_buffer("lookup", lookup, persistent=False)
        self.embedding = nn.Embedding(len(token_ids) + 1, width)
        self.positions = nn.Parameter(0.01 * torch.randn(CHUNK_LENGTH, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(CHUNK_LENGTH), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 77·k) CLIP ids -> (B, 77·k, width); each 77-token chunk is encoded on its own, as in SD1."""
        chunks = ids.reshape(-1, CHUNK_LENGTH)
        known = chunks.clamp_max(self.lookup.numel() - 1)
        rows = torch.where(chunks < self.lookup.numel(), self.lookup[known], torch.zeros_like(chunks))
        hidden = self.embedding(rows) + self.positions
        hidden = self.norm(self.layers(hidden, mask=self.causal, is_causal=True))
        return hidden.reshape(ids.shape[0], -1, hidden.shape[-1])


def use_fused_attention(unet: nn.Module) -> None:
    """Every attention module of `unet` runs `fused_attention_forward` from now on (training)."""
    for module in unet.modules():
        if hasattr(module, "to_q") and hasattr(module, "heads"):
            module.forward = types.MethodType(fused_attention_forward, module)


@contextlib.contextmanager
def fused_attention(unet: nn.Module) -> Iterator[None]:
    """`use_fused_attention` meanwhile (sampling, where no map is read); the modules' own forward after."""
    modules = [m for m in unet.modules() if hasattr(m, "to_q") and hasattr(m, "heads")]
    previous = [m.__dict__.get("forward") for m in modules]
    use_fused_attention(unet)
    try:
        yield
    finally:
        for module, forward in zip(modules, previous):
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule: ᾱ_t for t = 0..999 (float64)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


@dataclass
class Miniature:
    """The model: text encoder, UNet, and the tokenizer that feeds them."""

    text_encoder: TextEncoder
    unet: nn.Module
    tokenizer: ClipTokenizer
    design: Design = DESIGNS[DEFAULT_DESIGN]

    @classmethod
    def build(cls, seed: int = 0, tokenizer: ClipTokenizer | None = None, design: str = DEFAULT_DESIGN) -> Miniature:
        """Fresh weights (ldm's own initialisation), reproducible from `seed`."""
        tokenizer, chosen = tokenizer or ClipTokenizer(), design_of(design)
        unet_class = require_ldm()
        torch.manual_seed(seed)
        unet = unet_class(**chosen.unet)
        text_encoder = TextEncoder(world_vocabulary(tokenizer, chosen.words), **TEXT_CONFIG)
        return cls(text_encoder, unet, tokenizer, chosen)

    @classmethod
    def load(cls, source: Path | str = DEFAULT_DESIGN, tokenizer: ClipTokenizer | None = None) -> Miniature:
        """A miniature by name (its shipped weights) or from a weights file (its design is in the file)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        name = str(source) if str(source) in DESIGNS else DEFAULT_DESIGN
        path = design_of(name).weights if str(source) in DESIGNS else Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"no miniature weights at {path}; train them with `python -m initno train --model {name}`"
            )
        with safe_open(str(path), "pt") as handle:
            design = (handle.metadata() or {}).get("design", DEFAULT_DESIGN)
        model = cls.build(tokenizer=tokenizer, design=design)
        state = load_file(path)
        model.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        model.text_encoder.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")})
        return model.eval()

    def save(self, path: Path | str, metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        state = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        state |= {f"text.{k}": v for k, v in self.text_encoder.state_dict().items()}
        info = {"unet": json.dumps(self.design.unet), "text": json.dumps(TEXT_CONFIG)}
        if self.design.name != DEFAULT_DESIGN:  # the first miniature's file predates designs; keep its hash
            info["design"] = self.design.name
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=info | (metadata or {}))

    def eval(self) -> Miniature:
        self.unet.eval()
        self.text_encoder.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def parameters(self):
        yield from self.unet.parameters()
        yield from self.text_encoder.parameters()

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77) ids as SD1 reads each prompt (one chunk: the world's captions are short)."""
        from ..offline import read_prompt

        return torch.tensor([read_prompt(p, tokenizer=self.tokenizer).chunks[0].tokens for p in prompts])

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.token_ids(prompts))

    def apply(self, latent: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The eps prediction, in A1111's `apply_model(x, t, cond)` shape."""
        return self.unet(latent, timesteps=timesteps, context=cond)
