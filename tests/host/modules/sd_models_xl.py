"""An SDXL checkpoint as A1111 v1.10.1 presents it: sgm's `DiffusionEngine` (sgm/models/diffusion.py) with
the methods modules/sd_models_xl.py puts on it (`get_learned_conditioning` returning the dict with
`crossattn` and `vector`, `apply_model` calling `self.model(x, t, cond)`) and `extend_sdxl`'s fields;
its `GeneralConditioner` (sgm/modules/encoders/modules.py) as modules/sd_hijack.py rewraps it: CLIP-L as
`FrozenCLIPEmbedderForSDXLWithCustomWords` (modules/sd_hijack_clip.py), OpenCLIP-G as
`FrozenOpenCLIPEmbedder2WithCustomWords` (modules/sd_hijack_open_clip.py: pads with 0, returns the pooled
vector), and `cond_stage_model` = the conditioner when there are two text encoders, the one encoder when
there is one (the refiner). `OpenAIWrapper.forward` (sgm/modules/diffusionmodules/wrappers.py) passes
`crossattn` as the context and `vector` as `y`, under modules/sd_hijack_unet.py's cast.

The UNet is the real ldm `UNetModel` in the SDXL layout (`initno.tiny.TINY_SDXL_UNET`: the per-level
depths and sgm's `label_emb` for the vector are added with ldm's own parts)."""

from __future__ import annotations

import contextlib

import torch
from ldm.modules.diffusionmodules.util import timestep_embedding
from modules import devices, shared
from modules.sd_models import FrozenCLIPEmbedderWithCustomWords, _alphas_cumprod, load_checkpoint
from torch import nn

from initno.tiny import TINY_SDXL_UNET, build_unet, unet_context

CLIP_L_WIDTH, OPENCLIP_G_WIDTH = 768, 1280
SIZE_EMBEDDING = 256  # ConcatTimestepEmbedderND(outdim=256) per number: 6 numbers in the base's vector


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """CLIP-L in SDXL: 768 wide, pads with the end token."""

    def __init__(self):
        super().__init__(CLIP_L_WIDTH)


class FrozenOpenCLIPEmbedder2WithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """OpenCLIP-G in SDXL: 1280 wide, pads with token 0; also gives the pooled vector (the end token's
    embedding of the first chunk)."""

    def __init__(self):
        super().__init__(OPENCLIP_G_WIDTH)
        self.id_pad = 0

    def pooled(self, texts) -> torch.Tensor:
        batch_chunks, _ = self.process_texts(texts)
        rows = []
        for chunks in batch_chunks:
            tokens = list(chunks[0].tokens)
            rows.append(self.encode_chunk(chunks[0])[tokens.index(self.id_end)])
        return torch.stack(rows)


class GeneralConditioner(nn.Module):
    """The text embedders plus the size (and, for the refiner, aesthetic score) embedders.
    `tokenize`/`process_texts` delegate to the first text embedder, as sd_models_xl.py makes them."""

    def __init__(self, refiner: bool = False):
        super().__init__()
        texts = [FrozenOpenCLIPEmbedder2WithCustomWords()]
        if not refiner:
            texts.insert(0, FrozenCLIPEmbedderForSDXLWithCustomWords())
        self.embedders = nn.ModuleList(texts)
        self.refiner = refiner

    def tokenize(self, texts):
        return self.embedders[0].tokenize(texts)

    def process_texts(self, texts):
        return self.embedders[0].process_texts(texts)

    def forward(self, batch: dict) -> dict:
        texts = batch["txt"]
        crossattn = torch.cat([embedder(texts) for embedder in self.embedders], dim=2)
        numbers = ["original_size_as_tuple", "crop_coords_top_left"]
        numbers += ["aesthetic_score"] if self.refiner else ["target_size_as_tuple"]
        sizes = torch.cat([batch[key] for key in numbers], dim=1).float()
        size_embedding = timestep_embedding(sizes.flatten(), SIZE_EMBEDDING).reshape(len(texts), -1)
        vector = torch.cat([self.embedders[-1].pooled(texts), size_embedding], dim=1)
        return {"crossattn": crossattn, "vector": vector}


class OpenAIWrapper(nn.Module):
    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"  # set by extend_sdxl

    def forward(self, x, t, c):
        if "concat" in c:
            x = torch.cat([x, *c["concat"]], dim=1)
        context = unet_context(self.diffusion_model, c["crossattn"])  # ldm's one-context-per-block quirk
        return self.diffusion_model(x, timesteps=t, context=context, y=c["vector"])


class StandInSDXLModel(nn.Module):
    is_sd1, is_sd2, is_sdxl, is_ssd, is_sd3 = False, False, True, False, False
    is_sdxl_inpaint = False
    latent_channels = 4
    parameterization = "eps"
    cond_stage_key = "txt"

    def __init__(self, refiner: bool = False):
        super().__init__()
        config = TINY_SDXL_UNET
        if refiner:  # sd_xl_refiner.yaml: OpenCLIP-G only, and the aesthetic score in place of the target size
            vector_width = OPENCLIP_G_WIDTH + 5 * SIZE_EMBEDDING
            config = {**config, "context_dim": OPENCLIP_G_WIDTH, "adm_in_channels": vector_width}
        self.model = OpenAIWrapper(build_unet(config, seed=0))
        self.conditioner = GeneralConditioner(refiner)
        texts = list(self.conditioner.embedders)
        self.cond_stage_model = self.conditioner if len(texts) > 1 else texts[0]  # as sd_hijack.hijack sets it
        self.register_buffer("alphas_cumprod", _alphas_cumprod())  # LegacyDDPMDiscretization
        name = "tiny-sdxl-refiner" if refiner else "tiny-sdxl"
        load_checkpoint(self, name)
        self.apply_model_calls = 0

    def get_learned_conditioning(self, batch):
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        negative = getattr(batch, "is_negative_prompt", False)
        opts = shared.opts
        score = opts.sdxl_refiner_low_aesthetic_score if negative else opts.sdxl_refiner_high_aesthetic_score

        def per_image(*values):
            return torch.tensor([values], dtype=devices.dtype).repeat(len(batch), 1)

        return self.conditioner(
            {
                "txt": batch,
                "original_size_as_tuple": per_image(height, width),
                "crop_coords_top_left": per_image(shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left),
                "target_size_as_tuple": per_image(height, width),
                "aesthetic_score": per_image(score),
            }
        )

    def apply_model(self, x, t, cond):
        self.apply_model_calls += 1
        cond = {k: [c.to(devices.dtype_unet) for c in v] if isinstance(v, list) else v.to(devices.dtype_unet)
                for k, v in cond.items()}  # fmt: skip
        with devices.autocast():
            result = self.model(x.to(devices.dtype_unet), t.to(devices.dtype_unet), cond)
            return result.float() if devices.unet_needs_upcast else result

    def decode_first_stage(self, z):
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3]), scale_factor=8, mode="nearest")

    @contextlib.contextmanager
    def ema_scope(self):
        yield
