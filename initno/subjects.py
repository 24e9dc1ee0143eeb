"""Subjects as words: from what the user types to the context positions the text encoder sees.

Works on the chunks the host (or `initno.prompt`) made of the prompt, with any tokenizer: matching is
on token ids, so it is exactly as fine-grained as the model's own tokenisation.

What a subject covers (the rules, also in the README):
- a word or phrase covers all of its tokens ("hippopotamus" -> hippo, potam, us; "red apple" -> red,
  apple), and every place it occurs in the prompt; its attention map is the sum over those positions;
- matching is on the tokenizer's ids, so case and surrounding punctuation do not matter ("Cat" finds
  "cat,"), but a different word does ("cat" does not find "cats");
- a textual-inversion embedding is matched by its name and covers all of its vector slots;
- `#N` (or `#N #M` for one subject over several positions) gives context positions directly;
- subjects are separated by commas; two subjects may not share a position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

CHUNK_LENGTH = 77
"""Context positions per prompt chunk: start token, 75 prompt slots, end token."""


class SubjectError(ValueError):
    """A subject that cannot be mapped; the message names it and shows the prompt's words."""


@dataclass(frozen=True)
class Token:
    position: int
    id: int
    text: str
    weight: float
    word_end: bool
    embedding: str | None = None


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]
    embedding: bool = False


@dataclass(frozen=True)
class Subject:
    text: str
    positions: tuple[int, ...]
    auto: bool = False


@dataclass(frozen=True)
class PromptTokens:
    """The content tokens of a prompt (no start, end or padding), at their context positions."""

    tokens: tuple[Token, ...]
    context_length: int

    def words(self) -> list[Word]:
        words, pending = [], []
        for token in self.tokens:
            if token.embedding is not None:
                if pending:
                    words.append(_word(pending))
                    pending = []
                last = words[-1] if words else None
                if (
                    last
                    and last.embedding
                    and last.text == token.embedding
                    and last.positions[-1] == token.position - 1
                ):
                    words[-1] = Word(token.embedding, (*last.positions, token.position), embedding=True)
                else:
                    words.append(Word(token.embedding, (token.position,), embedding=True))
                continue
            pending.append(token)
            if token.word_end:
                words.append(_word(pending))
                pending = []
        if pending:
            words.append(_word(pending))
        return words

    def as_json(self) -> list[dict]:
        return [asdict(token) for token in self.tokens]


def report(prompt: PromptTokens, subjects: Sequence[Subject]) -> dict:
    """The JSON shape of `python -m initno tokens` and of the WebUI route `/initno/v1/tokens`: the tokens,
    the words they form (what the token view shows) and the subjects."""
    return {
        "tokens": prompt.as_json(),
        "words": [{"text": w.text, "positions": list(w.positions), "embedding": w.embedding} for w in prompt.words()],
        "subjects": [{"text": s.text, "positions": list(s.positions), "auto": s.auto} for s in subjects],
        "context_length": prompt.context_length,
    }


def choose_subjects(prompt: PromptTokens, text: str, encode: Callable[[str], list[int]]) -> list[Subject]:
    """The typed subjects (comma-separated), or, when none are typed, the automatic ones."""
    texts = parse_subject_list(text)
    return find_subjects(prompt, texts, encode) if texts else guess_subjects(prompt, encode)


def require_subjects(prompt: PromptTokens, subjects: Sequence[Subject]) -> None:
    """SubjectError when there is nothing to optimise for: no subject typed and none found automatically."""
    if not subjects:
        words = ", ".join(w.text for w in prompt.words())
        raise SubjectError(f"no subjects found automatically in the prompt ({words}); type them in Subjects")


def _word(tokens: list[Token]) -> Word:
    return Word("".join(t.text for t in tokens), tuple(t.position for t in tokens))


def read_chunks(
    chunks: Sequence,
    token_text: Callable[[int], str],
    *,
    end_id: int,
    first_position: int = 0,
) -> PromptTokens:
    """Content tokens of chunks with `tokens` (77 ids), `weights` and `embeddings` [(position, name,
    slots)], as made by `initno.prompt.chunk_prompt` or converted from the host's `PromptChunk`s."""
    tokens = []
    for index, chunk in enumerate(chunks):
        base = first_position + index * CHUNK_LENGTH
        slots = {}
        for position, name, count in chunk.embeddings:
            slots.update({position + k: name for k in range(count)})
        for j in range(1, CHUNK_LENGTH - 1):
            token_id = chunk.tokens[j]
            if j in slots:
                tokens.append(Token(base + j, token_id, slots[j], chunk.weights[j], True, slots[j]))
            elif token_id != end_id:
                text = token_text(token_id)
                word_end = text.endswith("</w>")
                tokens.append(Token(base + j, token_id, text.removesuffix("</w>"), chunk.weights[j], word_end))
    return PromptTokens(tuple(tokens), first_position + len(chunks) * CHUNK_LENGTH)


def join_prompts(parts: Sequence[PromptTokens]) -> PromptTokens:
    """Sub-prompts side by side in one context (the AND parts), positions shifted accordingly."""
    tokens, offset = [], 0
    for part in parts:
        tokens += [Token(t.position + offset, t.id, t.text, t.weight, t.word_end, t.embedding) for t in part.tokens]
        offset += part.context_length
    return PromptTokens(tuple(tokens), offset)


_POSITIONS = re.compile(r"^(#\d+)(\s+#\d+)*$")


def parse_subject_list(text: str) -> list[str]:
    """The comma-separated subjects, trimmed, empty ones dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def find_subject(prompt: PromptTokens, text: str, encode: Callable[[str], list[int]]) -> Subject:
    """The positions of one subject (see the module docstring for the rules)."""
    if _POSITIONS.match(text):
        positions = tuple(int(p) for p in re.findall(r"\d+", text))
        known = {t.position for t in prompt.tokens}
        unknown = [p for p in positions if p not in known]
        if unknown:
            raise SubjectError(f"position(s) {unknown} of subject {text!r} are not prompt tokens; {_listing(prompt)}")
        return Subject(text, positions)
    wanted = text.strip().lower()
    embedded = [t.position for t in prompt.tokens if t.embedding is not None and t.embedding.lower() == wanted]
    if embedded:
        return Subject(text, tuple(embedded))
    ids = encode(text)
    if not ids:
        raise SubjectError(f"subject {text!r} has no tokens")
    plain = [t for t in prompt.tokens if t.embedding is None]
    positions = []
    for start in range(len(plain) - len(ids) + 1):
        if [t.id for t in plain[start : start + len(ids)]] == ids:
            positions += [t.position for t in plain[start : start + len(ids)]]
    if not positions:
        raise SubjectError(f"subject {text!r} is not in the prompt; {_listing(prompt)}")
    return Subject(text, tuple(dict.fromkeys(positions)))


def find_subjects(prompt: PromptTokens, texts: Sequence[str], encode: Callable[[str], list[int]]) -> list[Subject]:
    subjects = [find_subject(prompt, text, encode) for text in texts]
    owner: dict[int, str] = {}
    for subject in subjects:
        for position in subject.positions:
            if position in owner:
                raise SubjectError(f"subjects {owner[position]!r} and {subject.text!r} share token position {position}")
            owner[position] = subject.text
    return subjects


def _listing(prompt: PromptTokens) -> str:
    words = ", ".join(f"{w.text}#{w.positions[0]}" for w in prompt.words())
    return f"the prompt's words are: {words or '(none)'}"


# -- subjects chosen automatically -----------------------------------------------------------------

DETERMINERS = frozenset(
    "a an the one two three four five six seven eight nine ten some several many few his her their my your its "
    "our this that these those another every each".split()
)
BOUNDARIES = frozenset(
    "and or but with without on in at of by for to from into onto near under over above below beside behind "
    "between next inside outside through across against around while is are was were has have wearing holding "
    "riding sitting standing lying playing eating looking walking running flying made".split()
)
FRAMING = frozenset(
    "photo photograph picture image painting drawing illustration render rendering portrait closeup close-up "
    "shot view scene style art artwork sketch poster wallpaper cartoon pair couple group".split()
)


def guess_subjects(prompt: PromptTokens, encode: Callable[[str], list[int]], limit: int = 4) -> list[Subject]:
    """Nouns chosen without a language model: the last word of each noun phrase that starts with a
    determiner ("a", "the", "two", ...), up to the next preposition, conjunction, common verb or
    punctuation. Framing words ("photo", "painting", ...) and repeats are skipped.

    Limits: prompts without determiners (tag lists such as "1girl, cat, forest") yield nothing, and an
    adjective at the end of a phrase ("a dog that is brown") can be picked. Users can always type the
    subjects instead.
    """
    words = [w.text.lower() for w in prompt.words()]
    chosen: list[str] = []
    index = 0
    while index < len(words):
        if words[index] not in DETERMINERS:
            index += 1
            continue
        phrase = []
        index += 1
        while index < len(words) and words[index] not in BOUNDARIES | DETERMINERS and words[index].isalpha():
            phrase.append(words[index])
            index += 1
        head = phrase[-1] if phrase else None
        if head and head not in FRAMING and head not in chosen:
            chosen.append(head)
    subjects = []
    for text in chosen[:limit]:
        found = find_subject(prompt, text, encode)
        subjects.append(Subject(found.text, found.positions, auto=True))
    return subjects
