"""The loaded checkpoint, as the parts of A1111 that the extension reads see it: an SD1 or SD2
`LatentDiffusion` (ldm/models/diffusion/ddpm.py) as hijacked by modules/sd_hijack.py (text encoder:
modules/sd_hijack_clip.py `FrozenCLIPEmbedderWithCustomWords`, modules/sd_hijack_open_clip.py
`FrozenOpenCLIPEmbedderWithCustomWords` for SD2) and modules/sd_hijack_unet.py (the `apply_model`
wrapper that casts inputs and runs under autocast), with the flags of modules/sd_models.py. The UNet is
the real ldm `UNetModel` (tiny configurations of the SD1 and SD2 layouts, random weights)."""

from __future__ import annotations

import contextlib
import hashlib
import types

import torch
from modules import devices, shared
from modules.sd_hijack import model_hijack
from torch import nn

from initno.clip_bpe import ClipTokenizer
from initno.prompt import chunk_prompt, parse_emphasis
from initno.tiny import TINY_SD2_UNET, TINY_UNET, TinyTextEncoder, build_unet


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


PromptChunkFix = types.SimpleNamespace  # (offset, embedding), as the host's namedtuple


class FrozenCLIPEmbedderWithCustomWords(nn.Module):
    """tokenize / tokenize_line / process_texts / forward of modules/sd_hijack_clip.py."""

    chunk_length = 75

    def __init__(self, dim: int):
        super().__init__()
        self.tokenizer = ClipTokenizer()
        self.wrapped = types.SimpleNamespace(tokenizer=self.tokenizer)
        self.encoder = TinyTextEncoder(dim=dim)
        self.hijack = model_hijack
        self.id_start, self.id_end, self.id_pad = self.tokenizer.start_id, self.tokenizer.end_id, self.tokenizer.end_id
        self.comma_token = self.tokenizer.comma_id

    def tokenize(self, texts):
        return [self.tokenizer.encode(text) for text in texts]

    def tokenize_line(self, line):
        fragments = parse_emphasis(line) if shared.opts.emphasis != "None" else [(line, 1.0)]

        def find_embedding(ids, position):
            embedding, length = self.hijack.embedding_db.find_embedding_at_position(ids, position)
            return None if embedding is None else (embedding.name, embedding.vectors, length)

        chunks, token_count = chunk_prompt(
            fragments,
            lambda text: self.tokenize([text])[0],
            start_id=self.id_start,
            end_id=self.id_end,
            comma_id=self.comma_token,
            comma_backtrack=shared.opts.comma_padding_backtrack,
            find_embedding=find_embedding,
        )
        result = []
        for chunk in chunks:
            prompt_chunk = PromptChunk()
            prompt_chunk.tokens, prompt_chunk.multipliers = chunk.tokens, chunk.weights
            db = self.hijack.embedding_db.word_embeddings
            # The host records a fix at its offset among the prompt tokens (position in the chunk - 1).
            prompt_chunk.fixes = [PromptChunkFix(offset=p - 1, embedding=db[name]) for p, name, _ in chunk.embeddings]
            result.append(prompt_chunk)
        return result, token_count

    def process_texts(self, texts):
        token_count, cache, batch_chunks = 0, {}, []
        for line in texts:
            if line not in cache:
                chunks, count = self.tokenize_line(line)
                token_count = max(count, token_count)
                cache[line] = chunks
            batch_chunks.append(cache[line])
        return batch_chunks, token_count

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def encode_chunk(self, chunk) -> torch.Tensor:
        tokens = list(chunk.tokens)
        if self.id_end != self.id_pad:  # SD2: everything after the end token becomes the pad token
            end = tokens.index(self.id_end)
            tokens[end + 1 :] = [self.id_pad] * (len(tokens) - end - 1)
        z = self.encoder([tokens])[0].clone()
        for fix in chunk.fixes:
            z[fix.offset + 1 : fix.offset + 1 + fix.embedding.vectors] = fix.embedding.vec
        multipliers = torch.tensor(chunk.multipliers)[:, None]
        original_mean = z.mean()
        z = z * multipliers  # "Original" emphasis: scale, then restore the mean
        return z * (original_mean / z.mean())

    def forward(self, texts):
        batch_chunks, _ = self.process_texts(texts)
        count = max(len(chunks) for chunks in batch_chunks)
        zs = []
        for i in range(count):
            chunk_batch = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            zs.append(torch.stack([self.encode_chunk(chunk) for chunk in chunk_batch]))
        return torch.hstack(zs).to(shared.device)


class FrozenOpenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """SD2's text encoder wrapper: the same BPE vocabulary, but padding with token 0 when encoding."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.id_pad = 0


class CheckpointInfo:
    """modules/sd_models.py `CheckpointInfo` of a loaded checkpoint: its file, names and hashes. `load_model`
    has called `calculate_shorthash` (the sha256 of the file, in the hash cache) and put the short hash on the
    model as `sd_model_hash`. The stand-in's sha256 is that of the checkpoint's name."""

    def __init__(self, name: str):
        self.filename = f"models/Stable-diffusion/{name}.safetensors"
        self.name = self.name_for_extra = self.model_name = name
        self.sha256 = hashlib.sha256(name.encode()).hexdigest()
        self.shorthash = self.sha256[:10]
        self.title = f"{name}.safetensors [{self.shorthash}]"
        self.short_title = f"{name} [{self.shorthash}]"


def load_checkpoint(model, name: str) -> None:
    """What `load_model` records on the model about its checkpoint."""
    model.sd_checkpoint_info = CheckpointInfo(name)
    model.sd_model_hash = model.sd_checkpoint_info.shorthash


class DiffusionWrapper(nn.Module):
    def __init__(self, diffusion_model, conditioning_key="crossattn"):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None):
        if self.conditioning_key == "hybrid":
            x = torch.cat([x, *c_concat], dim=1)
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


def _alphas_cumprod(steps=1000, start=0.00085, end=0.012):
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


class StandInSD1Model(nn.Module):
    is_sd1, is_sd2, is_sdxl, is_ssd, is_sd3 = True, False, False, False, False
    latent_channels = 4
    parameterization = "eps"
    cond_stage_key = "txt"

    def __init__(self, unet: nn.Module | None = None, conditioning_key: str = "crossattn"):
        super().__init__()
        self.model = DiffusionWrapper(unet if unet is not None else build_unet(seed=0), conditioning_key)
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(TINY_UNET["context_dim"])
        self.register_buffer("alphas_cumprod", _alphas_cumprod())
        load_checkpoint(self, "tiny-sd1")
        self.apply_model_calls = 0

    def get_learned_conditioning(self, texts):
        return self.cond_stage_model(texts)

    def apply_model(self, x_noisy, t, cond):
        # LatentDiffusion.apply_model, wrapped as modules/sd_hijack_unet.py does.
        self.apply_model_calls += 1
        if not isinstance(cond, dict):
            cond = {"c_crossattn": [cond]}
        cond = {k: [c.to(devices.dtype_unet) for c in v] for k, v in cond.items()}
        with devices.autocast():
            result = self.model(x_noisy.to(devices.dtype_unet), t.to(devices.dtype_unet), **cond)
            return result.float() if devices.unet_needs_upcast else result

    @classmethod
    def sd2(cls, parameterization: str = "eps") -> StandInSD1Model:
        """An SD2 checkpoint (v2-inference.yaml, or v2-inference-v.yaml with v prediction)."""
        model = cls(build_unet(TINY_SD2_UNET, seed=0))
        model.cond_stage_model = FrozenOpenCLIPEmbedderWithCustomWords(TINY_SD2_UNET["context_dim"])
        model.is_sd1, model.is_sd2, model.parameterization = False, True, parameterization
        load_checkpoint(model, f"tiny-sd2-{parameterization}")
        return model

    def decode_first_stage(self, z):
        # No VAE: the first three latent channels, upscaled 8×, stand in for the decoded image.
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3]), scale_factor=8, mode="nearest")

    @contextlib.contextmanager
    def ema_scope(self):
        yield
