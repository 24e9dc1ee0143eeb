"""What InitNO reads from the host for one txt2img batch (A1111 v1.10, `a1111-host.md` §3, §5, §6):
whether the loaded model can be optimised, the sampler's first timestep, each image's prompt as the
host tokenises it, and each image's conditioning at the first step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from modules import devices, prompt_parser, sd_unet, shared

from ..attention import is_attention_module
from ..clip_bpe import ClipTokenizer
from ..optimize import Denoiser
from ..prompt import Chunk
from ..subjects import CHUNK_LENGTH, PromptTokens, join_prompts, read_chunks
from . import forge


class Unsupported(Exception):
    """InitNO cannot run for this generation; the message says why, for the user."""


def unet_of(model) -> torch.nn.Module:
    """The checkpoint's UNet, or Unsupported naming what is in the way."""
    if getattr(model, "is_sd3", False):
        raise Unsupported("SD3 models have no UNet; InitNO needs a UNet checkpoint (SD1, SD2, SDXL)")
    if getattr(sd_unet, "current_unet", None) is not None:
        raise Unsupported(
            f"an alternative UNet is active ({getattr(sd_unet.current_unet, 'option', 'e.g. TensorRT')}); "
            "InitNO needs the checkpoint's own UNet (set SD Unet to None)"
        )
    if getattr(model, "is_sdxl", False) and len(text_encoders(model)) == 1:
        # The refiner (one text encoder, OpenCLIP-G) is trained for the last, low-noise steps only: its
        # attention at the first step says nothing about the composition.
        raise Unsupported(
            "SDXL refiner checkpoints are not supported; load an SDXL base checkpoint "
            "(the refiner can still finish the image through txt2img's Refiner option)"
        )
    if forge.is_forge(model):
        return forge.unet_of(model, Unsupported)
    wrapper = getattr(model, "model", None)
    unet = getattr(wrapper, "diffusion_model", None)
    if unet is None:
        raise Unsupported(f"the loaded model ({type(model).__name__}) has no ldm/sgm UNet")
    conditioning_key = getattr(wrapper, "conditioning_key", "crossattn")
    if conditioning_key not in ("crossattn", None) or getattr(model, "is_sdxl_inpaint", False):
        raise Unsupported(f"inpainting and edit models are not supported (conditioning {conditioning_key!r})")
    if getattr(unet, "in_channels", 4) != getattr(model, "latent_channels", 4):
        raise Unsupported("inpainting models are not supported (the UNet takes extra input channels)")
    return unet


def text_encoders(model) -> list:
    """The hijacked text encoders: SDXL base has two (CLIP-L, OpenCLIP-G), its refiner one."""
    engines = forge.text_engines(model) if forge.is_forge(model) else None
    if engines:
        return engines
    conditioner = getattr(model, "conditioner", None)
    if conditioner is None:
        return [model.cond_stage_model]
    return [embedder for embedder in conditioner.embedders if hasattr(embedder, "process_texts")]


def is_loaded(model) -> bool:
    """Whether `model` is a checkpoint with its text encoders (Forge's placeholder before the first
    generation is not)."""
    return any(encoder is not None for encoder in text_encoders(model))


def first_timestep(p) -> float:
    """The timestep of the sampler's first step: k-diffusion samplers through their sigma schedule,
    DDIM/PLMS/UniPC through their timestep list (the official code uses PNDM's first, 981 of 50)."""
    sampler = p.sampler
    if hasattr(sampler, "get_sigmas") and hasattr(sampler, "model_wrap"):
        sigmas = sampler.get_sigmas(p, p.steps)
        wrap = sampler.model_wrap
        return float(wrap.sigma_to_t(torch.as_tensor(sigmas[0], device=wrap.log_sigmas.device)))
    if hasattr(sampler, "get_timesteps"):
        return float(sampler.get_timesteps(p, p.steps).max())
    raise Unsupported(f"unknown sampler type {type(sampler).__name__}: cannot tell its first timestep")


def hypernetwork_transform():
    """The host's hypernetwork hook for the captured attention layers, when hypernetworks are loaded."""
    if not getattr(shared, "loaded_hypernetworks", None):
        return None
    from modules.hypernetworks import hypernetwork

    return lambda context, module: hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context, module)


CHECKPOINTING = ("Automatic", "On", "Off")

ACTIVATION_BYTES_PER_PIXEL = {"sd1": 1624.0, "sd2": 1468.0, "sdxl": 4761.0}
"""What one InitNO step keeps for its backward pass, per image pixel, in a 2-byte dtype (fp16/bf16), without
checkpointing: the peaks of `python -m initno.bench --arch A --dtype bf16` divided by the pixels."""


def activation_bytes(p) -> float:
    """The memory an InitNO step needs above the loaded model, without checkpointing."""
    model = p.sd_model
    family = "sdxl" if getattr(model, "is_sdxl", False) else "sd2" if getattr(model, "is_sd2", False) else "sd1"
    dtype = forge.compute_dtype(model) if forge.is_forge(model) else devices.dtype_unet
    return ACTIVATION_BYTES_PER_PIXEL[family] * p.width * p.height * dtype.itemsize / 2


def free_device_memory() -> int | None:
    """Bytes the UNet's device can still give (CUDA: free plus what torch holds unused); None elsewhere."""
    if devices.device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(devices.device)
    return free + torch.cuda.memory_reserved(devices.device) - torch.cuda.memory_allocated(devices.device)


def checkpointing_automatic() -> bool:
    return getattr(shared.opts, "initno_checkpointing", "Automatic") == "Automatic"


def checkpoint_blocks(p) -> bool:
    """Settings → InitNO → Memory. Automatic: checkpoint the transformer blocks when the step would not fit
    in the GPU's free memory with a margin (a CPU's memory is the system's: never); the job retries with
    checkpointing if the estimate was wrong and the step ran out of memory."""
    if not checkpointing_automatic():
        return shared.opts.initno_checkpointing == "On"
    free = free_device_memory()
    return free is not None and activation_bytes(p) > 0.8 * free


def check_before_generating(model, token_merging_ratio: float) -> torch.nn.Module:
    """Every reason to skip InitNO that is known before a generation starts (the model, the settings):
    raises Unsupported with it; else returns the UNet. The token view asks this too, so that it warns
    before the user generates."""
    if token_merging_ratio > 0:
        # ToMe merges the tokens the attention maps are made of: the maps would no longer be a grid.
        raise Unsupported("token merging is on; set Settings → Optimizations → Token merging ratio to 0")
    return unet_of(model)


MOTION_MODULES = ("VanillaTemporalModule",)
"""AnimateDiff's motion modules (continue-revolution/sd-webui-animatediff a88e889, motion_module.py:110),
which `AnimateDiffMM.inject` adds to the UNet's blocks for the whole generation (scripts/animatediff_mm.py:62-110)."""


def check_other_extensions(unet: torch.nn.Module) -> None:
    """Reasons to skip InitNO that other extensions put on the UNet for this generation (issue 13 matrix)."""
    for module in unet.modules():
        if type(module).__name__ in MOTION_MODULES:
            raise Unsupported(
                "AnimateDiff is on: its motion modules make the batch one video, and optimising each frame's "
                "noise on its own would break the frames' coherence; the video is generated without InitNO"
            )
    for name, module in unet.named_modules():
        forward = module.__dict__.get("forward")
        # Cross-attention only: what ties the prompt's tokens to the image, the maps InitNO reads. A
        # replaced self-attention (the WebUI's Hypertile tiles it) keeps running outside the read layers.
        if forward is None or not name.endswith("attn2") or not is_attention_module(module):
            continue
        owner = _extension_of(forward)
        # Regional Prompter's attention (and prompt) mode, sd-webui-regional-prompter be62345
        # scripts/attention.py:119-125: splits every batch by the generation's batch size and counts its
        # calls to tell prompts apart; InitNO's one-image passes break both.
        hint = "; its Latent mode works with InitNO" if "regional-prompter" in owner else ""
        raise Unsupported(
            f"{owner} replaces the UNet's cross-attention ({name}), and InitNO's passes (one image, outside "
            f"the sampler) would run through it; turn it off to use InitNO{hint}"
        )


def _extension_of(function) -> str:
    """The extension (its folder) whose file defines `function`, else that file's name."""
    function = getattr(function, "func", function)  # functools.partial
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    path = Path(code.co_filename) if code is not None else Path("another extension")
    parts = path.parts
    for marker in ("extensions", "extensions-builtin"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1]
    return path.name


def denoiser(p) -> Denoiser:
    model = p.sd_model
    unet = check_before_generating(model, p.get_token_merging_ratio())
    check_other_extensions(unet)
    if forge.is_forge(model):
        return forge.denoiser(model, unet, first_timestep(p), checkpoint_blocks(p))
    return Denoiser(
        unet=unet,
        apply=model.apply_model,
        timestep=first_timestep(p),
        context_transform=hypernetwork_transform(),
        checkpoint_blocks=checkpoint_blocks(p),
        recompute_context=devices.autocast,  # apply_model's context: A1111's manual_cast patches layers there
    )


class _TextModel:
    """The text side of the loaded model, as `tokenize` / `process_texts` and the special ids."""

    _display: ClipTokenizer | None = None

    def __init__(self, model):
        encoders = text_encoders(model)
        # A1111 and reForge tokenise through the hijacked `cond_stage_model`; Forge 2 has its engines only.
        self.model = model.cond_stage_model if getattr(model, "cond_stage_model", None) is not None else encoders[0]
        self.end_id = encoders[0].id_end  # SDXL: CLIP-L's, whose chunks the positions follow

    def encode(self, text: str) -> list[int]:
        return self.model.tokenize([text])[0]

    def chunks(self, text: str) -> list[Chunk]:
        prompt_chunks = self.model.process_texts([text])[0][0]
        return [
            Chunk(
                list(c.tokens),
                list(c.multipliers),
                [(fix.offset + 1, fix.embedding.name, int(fix.embedding.vectors)) for fix in c.fixes],
            )
            for c in prompt_chunks
        ]

    def token_text(self, token_id: int) -> str:
        # All CLIP tokenizers of SD1/SD2/SDXL share one BPE vocabulary; it ships with open-clip-torch.
        try:
            if _TextModel._display is None:
                _TextModel._display = ClipTokenizer()
            return _TextModel._display.token_text(token_id)
        except (FileNotFoundError, KeyError):
            return f"<{token_id}></w>"


@dataclass(frozen=True)
class ImagePrompt:
    """One image's prompt as the InitNO pass sees it: its AND parts side by side."""

    tokens: PromptTokens
    part_lengths: tuple[int, ...]
    encode: Callable[[str], list[int]]


def read_prompt(p, index: int) -> ImagePrompt:
    """Tokens of image `index` of the batch: `p.prompts` (styles applied, extra networks removed)."""
    return read_prompt_text(p.sd_model, p.prompts[index], getattr(p, "firstpass_steps", p.steps))


def read_prompt_text(model, prompt: str, steps: int) -> ImagePrompt:
    """A prompt split on AND, each part at the first step, tokenised by the model's own text encoder."""
    text_model = _TextModel(model)
    res_indexes, flat, _ = prompt_parser.get_multicond_prompt_list([prompt])
    schedules = prompt_parser.get_learned_conditioning_prompt_schedules(
        flat, steps, None, getattr(shared.opts, "use_old_scheduling", False)
    )
    parts = []
    for part_index, _weight in res_indexes[0]:
        chunks = text_model.chunks(schedules[part_index][0][1])
        parts.append(read_chunks(chunks, text_model.token_text, end_id=text_model.end_id))
    return ImagePrompt(join_prompts(parts), tuple(part.context_length for part in parts), text_model.encode)


def softmax_positions(model, prompt: PromptTokens) -> list[int] | None:
    """Where the token softmax runs. SD1: as the official code (every chunk's slots but the first and
    last: the prompt, its end token and the padding). SD2: the prompt's own tokens only: its OpenCLIP
    encoder pads with a token of its own, and Attend-and-Excite found that including the end token and
    the padding spoils the maps on SD2.1 (its `normalize_eot`). SDXL: as SD2, since 1280 of its 2048
    context channels come from OpenCLIP-G, padded the same way."""
    if getattr(model, "is_sd2", False) or getattr(model, "is_sdxl", False):
        return [token.position for token in prompt.tokens]
    return None


def image_conditioning(p, index: int, part_lengths: tuple[int, ...]):
    """Image `index`'s conditioning at the first step, cond branch only: its AND parts' rows of `p.c`,
    each cut to its own length and joined along the tokens (SDXL: with the first part's pooled vector).

    Rows that an extension put in front of every prompt's context (as many as the rows beyond whole
    77-token chunks) are kept once, in front of the joined parts. ControlNet (v1.1.455, scripts/hook.py)
    marks each prompt's context in `p.c` with one such row (+1024 everywhere for a positive prompt, −1024
    for a negative one); its UNet forward strips it again and reads it to tell the cond rows from the
    uncond rows. So in InitNO's passes the hook finds the positive marker the sampler's cond branch has,
    and the UNet's cross-attention sees exactly the prompt's context: the token positions InitNO reads
    stay those of the unmarked prompt."""
    conds_list, batch = prompt_parser.reconstruct_multicond_batch(p.c, 0)
    rows = [row for row, _weight in conds_list[index]]

    def tokens_of(tensor):
        lead = tensor.shape[1] % CHUNK_LENGTH
        parts = [tensor[row][lead : lead + length] for row, length in zip(rows, part_lengths)]
        joined = torch.cat([tensor[rows[0]][:lead], *parts])
        return joined[None].clone()  # a normal tensor even if the host made it under inference mode

    if isinstance(batch, dict):
        return {"crossattn": tokens_of(batch["crossattn"]), "vector": batch["vector"][rows[0]][None].clone()}
    return tokens_of(batch)


def prepared(p, latent: torch.Tensor) -> contextlib.AbstractContextManager:
    """Around InitNO's passes before sampling: what the host's sampler does to the model first (Forge: load
    it, apply LoRA); in A1111 the model is ready when the hook runs."""
    return forge.prepared(p.sd_model, latent) if forge.is_forge(p.sd_model) else contextlib.nullcontext()


@contextlib.contextmanager
def differentiable_passes(model, unet: torch.nn.Module) -> Iterator[None]:
    """Around InitNO's UNet passes (the noise optimisation, each guided step): gradients on, also under a
    host that samples in inference mode (Forge), and through every block whatever wraps them."""
    own_weights = forge.differentiable(unet, Unsupported) if forge.is_forge(model) else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), own_weights, gradients_through_blocks(unet):
        yield


@contextlib.contextmanager
def gradients_through_blocks(unet: torch.nn.Module) -> Iterator[None]:
    """Keeps InitNO's passes differentiable through every block of the UNet, whatever wraps its forward.

    ControlNet (v1.1.455, scripts/hook.py) replaces the UNet's forward with its own, which runs the time
    embedding, the encoder and the middle block under `torch.no_grad()` (harmless while sampling, which
    runs without gradients anyway). In InitNO's passes that would leave the maps of those blocks without
    a gradient, and the noise would only be reached through ControlNet's residuals. Meanwhile, a pass that
    starts with gradients on switches them back on at each block; the enclosing `no_grad` restores the
    mode it found (on) when it exits, so nothing outlives the pass, and every hook is removed afterwards."""
    wanted = False

    def on_unet_input(_module, _args) -> None:
        nonlocal wanted
        wanted = torch.is_grad_enabled()

    def on_block_input(_module, _args) -> None:
        if wanted and not torch.is_grad_enabled():
            torch.set_grad_enabled(True)

    blocks = []
    for child in unet.children():  # ldm/sgm: time_embed, input_blocks[i], middle_block, output_blocks[i], out
        blocks.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    handles = [unet.register_forward_pre_hook(on_unet_input)]
    try:
        handles += [block.register_forward_pre_hook(on_block_input) for block in blocks]
        yield
    finally:
        for handle in handles:
            handle.remove()
