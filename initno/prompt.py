"""How A1111 v1.10.1 turns a prompt into 77-token chunks, for use without a WebUI (the CLI, the demo).

Mirrors, in this package's own code:
- `modules/extra_networks.py`: `parse_prompt` (the `<lora:...>` tags are removed);
- `modules/prompt_parser.py`: `parse_prompt_attention` (emphasis, escapes, BREAK), the AND split of
  `get_multicond_prompt_list`, and the prompt in effect at the first sampling step of
  `get_learned_conditioning_prompt_schedules` (prompt editing `[a:b:N]`, alternation `[a|b]`);
- `modules/sd_hijack_clip.py`: `TextConditionalModel.tokenize_line` (75-token chunks, BREAK, the comma
  back-tracking rule, start/end/padding tokens).

Checked against the real host's output in tests/data. In the WebUI the host's own functions run instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CHUNK_TOKENS = 75
BREAK = ("BREAK", -1.0)

_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """(text, weight) fragments as `parse_prompt_attention` returns them; BREAK is ("BREAK", -1)."""
    fragments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            fragments.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(fragments))
        elif piece == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for index, part in enumerate(_BREAK_SPLIT.split(piece)):
                if index:
                    fragments.append(list(BREAK))
                fragments.append([part, 1.0])
    for start in round_open:
        scale_from(start, 1.1)
    for start in square_open:
        scale_from(start, 1 / 1.1)
    if not fragments:
        fragments = [["", 1.0]]
    merged = [fragments[0]]
    for fragment in fragments[1:]:
        if fragment[1] == merged[-1][1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [(text, weight) for text, weight in merged]


def strip_extra_networks(prompt: str) -> str:
    """The prompt without `<lora:...>`-style tags (`extra_networks.parse_prompt`)."""
    return _EXTRA_NETWORK.sub("", prompt)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The AND-composed sub-prompts with their weights (`get_multicond_prompt_list`)."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(subprompt)
        text, weight = match.groups() if match else (subprompt, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def _closing_bracket(text: str, start: int) -> int | None:
    """Index of the bracket closing the one at `start`, honouring escapes and nesting; None if open."""
    depth, index = 0, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                return index if char == {"(": ")", "[": "]"}[text[start]] else None
        index += 1
    return None


def _split_top_level(text: str, separators: str) -> list[tuple[str, str]]:
    """Splits on separators outside brackets: [(part, separator that ended it or '')]."""
    parts, depth, current, index = [], 0, [], 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            current.append(text[index : index + 2])
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if depth == 0 and char in separators:
            parts.append(("".join(current), char))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append(("".join(current), ""))
    return parts


def _brackets(prompt: str, visit: Callable[[str, str], str]) -> str:
    """Rewrites each top-level (...) / [...] group with `visit(bracket, inside)`; the rest is kept."""
    out, index = [], 0
    while index < len(prompt):
        char = prompt[index]
        if char == "\\":
            out.append(prompt[index : index + 2])
            index += 2
            continue
        if char in "([":
            end = _closing_bracket(prompt, index)
            if end is not None:
                out.append(visit(char, prompt[index + 1 : end]))
                index = end + 1
                continue
        out.append(char)
        index += 1
    return "".join(out)


def _edit(inner: str, steps: int) -> tuple[str, str, int] | None:
    """(before, after, when) of a prompt edit `[before:after:when]` / `[after:when]`; None otherwise."""
    parts = [part for part, _ in _split_top_level(inner, ":")]
    if len(parts) not in (2, 3) or not _NUMBER.fullmatch(parts[-1]):
        return None
    number = parts[-1].strip()
    when = min(steps, int(float(number) * steps if "." in number else float(number)))
    before, after = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])
    return before, after, when


def prompt_at_step(prompt: str, step: int, steps: int) -> str:
    """The prompt in effect at sampling step `step` (1-based) of `steps`: each prompt edit
    `[before:after:when]` gives `before` up to step `when` (a fraction means that share of `steps`),
    `after` from then on; alternation `[a|b|...]` cycles per step. Emphasis is kept as written."""

    def visit(bracket: str, inner: str) -> str:
        if bracket == "[":
            options = _split_top_level(inner, "|")
            if len(options) > 1:
                return prompt_at_step(options[(step - 1) % len(options)][0], step, steps)
            edit = _edit(inner, steps)
            if edit is not None:
                before, after, when = edit
                return prompt_at_step(before if step <= when else after, step, steps)
        closing = ")" if bracket == "(" else "]"
        return bracket + prompt_at_step(inner, step, steps) + closing

    return _brackets(prompt, visit)


def schedule_steps(prompt: str, steps: int) -> list[int]:
    """The steps at which the prompt changes (the last is `steps`), as the host's schedule lists them."""
    found = {steps}

    def visit(bracket: str, inner: str) -> str:
        if bracket == "[":
            options = _split_top_level(inner, "|")
            if len(options) > 1:
                found.update(range(1, steps + 1))
            edit = _edit(inner, steps)
            if edit is not None and edit[2] >= 1:
                found.add(edit[2])
        for part, _ in _split_top_level(inner, "|:"):
            _brackets(part, visit)
        return ""

    _brackets(prompt, visit)
    return sorted(found)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, prompt text)] as `get_learned_conditioning_prompt_schedules` gives for one prompt."""
    return [(step, prompt_at_step(prompt, step, steps)) for step in schedule_steps(prompt, steps)]


def first_step_prompt(prompt: str, steps: int = 20) -> str:
    """The prompt in effect at the first sampling step (the one InitNO scores)."""
    return prompt_at_step(prompt, schedule_steps(prompt, steps)[0], steps)


@dataclass
class Chunk:
    """One 77-token chunk: start, 75 tokens, end; with the weights and the textual-inversion slots."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    embeddings: list[tuple[int, str, int]] = field(default_factory=list)
    """(offset in the chunk, embedding name, slots)"""


EmbeddingLookup = Callable[[list[int], int], tuple[str, int, int] | None]
"""(fragment token ids, position) -> (name, vectors, ids consumed) of an embedding starting there."""


def chunk_prompt(
    fragments: Sequence[tuple[str, float]],
    encode: Callable[[str], list[int]],
    *,
    start_id: int,
    end_id: int,
    comma_id: int,
    comma_backtrack: int = 20,
    find_embedding: EmbeddingLookup | None = None,
) -> tuple[list[Chunk], int]:
    """The chunks of `tokenize_line`, and its token count.

    Each fragment is tokenised on its own. A chunk holds 75 tokens; BREAK starts a new one; when a
    chunk fills up and a comma lies within `comma_backtrack` tokens of its end, the tokens after that
    comma move to the next chunk. Chunks get start/end tokens and are padded with `end_id`.
    """
    chunks: list[Chunk] = []
    chunk = Chunk()
    token_count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK_TOKENS
        padding = CHUNK_TOKENS - len(chunk.tokens)
        chunk.tokens = [start_id, *chunk.tokens, *[end_id] * max(padding, 0), end_id]
        chunk.weights = [1.0, *chunk.weights, *[1.0] * max(padding, 0), 1.0]
        chunk.embeddings = [(offset + 1, name, slots) for offset, name, slots in chunk.embeddings]
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for text, weight in fragments:
        if (text, weight) == BREAK:
            close()
            continue
        ids = encode(text)
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma_id:
                last_comma = len(chunk.tokens)
            elif (
                comma_backtrack
                and len(chunk.tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                close()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK_TOKENS:
                close()
            embedding = find_embedding(ids, position) if find_embedding else None
            if embedding is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            name, slots, consumed = embedding
            if len(chunk.tokens) + slots > CHUNK_TOKENS:
                close()
            chunk.embeddings.append((len(chunk.tokens), name, slots))
            chunk.tokens += [0] * slots
            chunk.weights += [weight] * slots
            position += consumed
    if chunk.tokens or not chunks:
        close(is_last=True)
    return chunks, token_count
