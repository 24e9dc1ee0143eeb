"""A prompt read as A1111 reads it for an SD1 model, without a WebUI: extra-network tags removed, the
AND parts, each at its first sampling step, emphasis and BREAK, 77-token chunks with comma
back-tracking, then the subjects' positions.

Used by `python -m initno tokens` and the miniature (its model reads prompts so). The WebUI glue does the
same with the host's own functions (`initno/webui/conditioning.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .clip_bpe import ClipTokenizer
from .prompt import Chunk, chunk_prompt, first_step_prompt, parse_emphasis, split_and, strip_extra_networks
from .subjects import PromptTokens, Subject, choose_subjects, join_prompts, read_chunks, report


@dataclass(frozen=True)
class ReadPrompt:
    chunks: list[Chunk]
    """All chunks, the AND parts one after another (the context the InitNO pass sees)."""
    tokens: PromptTokens
    subjects: list[Subject]

    def as_json(self) -> dict:
        return report(self.tokens, self.subjects)


def read_prompt(
    prompt: str,
    subjects: str = "",
    *,
    tokenizer: ClipTokenizer | None = None,
    steps: int = 20,
    emphasis: bool = True,
    comma_backtrack: int = 20,
) -> ReadPrompt:
    """Tokens and subject positions of `prompt`; empty `subjects` chooses nouns automatically."""
    tokenizer = tokenizer or ClipTokenizer()
    chunks: list[Chunk] = []
    parts: list[PromptTokens] = []
    for part, _weight in split_and(strip_extra_networks(prompt)):
        text = first_step_prompt(part, steps)
        fragments = parse_emphasis(text) if emphasis else [(text, 1.0)]
        part_chunks, _ = chunk_prompt(
            fragments,
            tokenizer.encode,
            start_id=tokenizer.start_id,
            end_id=tokenizer.end_id,
            comma_id=tokenizer.comma_id,
            comma_backtrack=comma_backtrack,
        )
        chunks += part_chunks
        parts.append(read_chunks(part_chunks, tokenizer.token_text, end_id=tokenizer.end_id))
    tokens = join_prompts(parts)
    return ReadPrompt(chunks, tokens, choose_subjects(tokens, subjects, tokenizer.encode))
