"""Each image's prompt as the host tokenises it, and its conditioning at the first step: what InitNO's
passes read from one txt2img batch (`p.prompts`, `p.c`), the same on every host."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from modules import prompt_parser, shared

from ..clip_bpe import ClipTokenizer
from ..prompt import Chunk
from ..subjects import CHUNK_LENGTH, PromptTokens, join_prompts, read_chunks
from .hosts import Host


class _TextModel:
    """The text side of the loaded model, as `tokenize` / `process_texts` and the special ids."""

    _display: ClipTokenizer | None = None

    def __init__(self, host: Host):
        self.model = host.text_model()
        self.end_id = host.text_encoders()[0].id_end  # SDXL: CLIP-L's, whose chunks the positions follow

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


def read_prompt(p, host: Host, index: int) -> ImagePrompt:
    """Tokens of image `index` of the batch: `p.prompts` (styles applied, extra networks removed)."""
    return read_prompt_text(host, p.prompts[index], getattr(p, "firstpass_steps", p.steps))


def read_prompt_text(host: Host, prompt: str, steps: int) -> ImagePrompt:
    """A prompt split on AND, each part at the first step, tokenised by the model's own text encoder."""
    text_model = _TextModel(host)
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


def image_unconditioning(p, index: int):
    """Image `index`'s negative prompt's conditioning at the first step: its row of `p.uc`, whole (the
    sampler's uncond row, with any row an extension put in front, such as ControlNet's negative marker;
    SDXL: the dict with its pooled vector). Lookahead's sampler needs it; InitNO's scores never read it."""
    batch = prompt_parser.reconstruct_cond_batch(p.uc, 0)
    if isinstance(batch, dict):
        return {"crossattn": batch["crossattn"][index][None].clone(), "vector": batch["vector"][index][None].clone()}
    return batch[index][None].clone()  # a normal tensor even if the host made it under inference mode
