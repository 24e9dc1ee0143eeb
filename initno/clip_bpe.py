"""The CLIP BPE tokenizer, offline, for checking token positions without a WebUI.

Reads the BPE vocabulary that ships inside the `open-clip-torch` package (the file is located without
importing open_clip, whose import pulls in torchvision). Produces the ids the SD1 text encoder sees
(HF `CLIPTokenizer` for openai/clip-vit-large-patch14; SD2's open_clip tokenizer shares the vocabulary).
In the WebUI the loaded model's own tokenizer is used instead.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import re
import unicodedata
from pathlib import Path

START_ID = 49406
END_ID = 49407
VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGE_COUNT = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def vocabulary_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the CLIP vocabulary ships with open-clip-torch: pip install --no-deps open-clip-torch")
    return Path(next(iter(spec.submodule_search_locations))) / VOCABULARY_FILE


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that CLIP's BPE works on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _category(char: str) -> str:
    if char.isspace():
        return "space"
    kind = unicodedata.category(char)[0]
    return {"L": "letter", "N": "number"}.get(kind, "other")


def split_words(text: str) -> list[str]:
    """CLIP's pre-tokenisation: special tokens, contractions, letter runs, single digits, runs of other
    symbols (the `\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+` pattern, without the `regex` package)."""
    pieces: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        kind = _category(char)
        special = next((s for s in (*_SPECIAL, *_CONTRACTIONS) if text.startswith(s, index)), None)
        if special:
            pieces.append(special)
            index += len(special)
        elif kind == "space":
            index += 1
        elif kind == "number":
            pieces.append(char)
            index += 1
        else:
            end = index + 1
            while end < len(text) and _category(text[end]) == kind:
                end += 1
            pieces.append(text[index:end])
            index = end
    return pieces


def clean_text(text: str) -> str:
    """CLIP's text cleaning: ftfy (when installed, as in the WebUI), HTML unescaping, collapsed
    whitespace, lower case."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """Text -> CLIP token ids (without start/end tokens), and ids -> readable token text."""

    start_id = START_ID
    end_id = END_ID

    def __init__(self, path: Path | None = None):
        with gzip.open(path or vocabulary_path()) as file:
            lines = file.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
        self.bytes = _byte_alphabet()
        alphabet = list(self.bytes.values())
        vocabulary = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder = {token: index for index, token in enumerate(vocabulary)}
        self.decoder = dict(enumerate(vocabulary))
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.byte_decoder = {c: b for b, c in self.bytes.items()}
        self.comma_id = self.encoder[",</w>"]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one tokenizer per process; words repeat a lot
    def _bpe(self, word: str) -> tuple[str, ...]:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(itertools.pairwise(parts))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, index = [], 0
            while index < len(parts):
                if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                    merged.append(parts[index] + parts[index + 1])
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in split_words(clean_text(text)):
            if word in _SPECIAL:
                ids.append(self.encoder[word])
                continue
            mapped = "".join(self.bytes[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped))
        return ids

    def token_text(self, token_id: int) -> str:
        """The readable text of one token; a trailing "</w>" marks the end of a word."""
        token = self.decoder[token_id]
        if token in _SPECIAL:
            return token
        word_end = token.endswith("</w>")
        body = token[:-4] if word_end else token
        text = bytearray(self.byte_decoder[c] for c in body).decode("utf-8", errors="replace")
        return text + ("</w>" if word_end else "")
