"""The offline prompt reading against what the real A1111 v1.10.1 produced (tests/data, see its
"source"), and the subject rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from initno.clip_bpe import ClipTokenizer
from initno.offline import read_prompt
from initno.prompt import (
    chunk_prompt,
    first_step_prompt,
    parse_emphasis,
    prompt_schedule,
    split_and,
    strip_extra_networks,
)
from initno.subjects import SubjectError

GOLDEN = json.loads((Path(__file__).parent / "data" / "a1111_v1.10.1_prompts.json").read_text())
CASES = {case["prompt"]: case for case in GOLDEN["prompts"]}


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


def _embedding_lookup(tokenizer, name="myemb", vectors=3):
    ids = tokenizer.encode(name)

    def find(fragment_ids, position):
        if fragment_ids[position : position + len(ids)] == ids:
            return name, vectors, len(ids)
        return None

    return find


@pytest.mark.parametrize("prompt", list(CASES))
def test_emphasis_as_the_host_parses_it(prompt):
    expected = [(text, pytest.approx(weight)) for text, weight in CASES[prompt]["parse_prompt_attention"]]
    assert parse_emphasis(prompt) == expected


@pytest.mark.parametrize("prompt", list(CASES))
def test_first_step_and_and_parts_as_the_host_has_them(prompt):
    case = CASES[prompt]
    assert first_step_prompt(prompt, 20) == case["first_schedule"]
    assert [text for text, _ in split_and(prompt)] == case["and_parts"]
    assert [weight for _, weight in split_and(prompt)] == case["and_weights"]
    assert strip_extra_networks(prompt) == case["without_extra_networks"]


@pytest.mark.parametrize("prompt", list(CASES))
def test_chunks_as_the_host_tokenizes_each_part(prompt, tokenizer):
    for part in CASES[prompt]["first_step_parts"]:
        chunks, token_count = chunk_prompt(
            parse_emphasis(part["text"]),
            tokenizer.encode,
            start_id=tokenizer.start_id,
            end_id=tokenizer.end_id,
            comma_id=tokenizer.comma_id,
            find_embedding=_embedding_lookup(tokenizer),
        )
        assert token_count == part["token_count"]
        assert [c.tokens for c in chunks] == [c["tokens"] for c in part["chunks"]]
        assert [[round(w, 4) for w in c.weights] for c in chunks] == [c["multipliers"] for c in part["chunks"]]
        # The host records an embedding at its offset among the prompt tokens; we at its chunk position.
        assert [[[p - 1, n, s] for p, n, s in c.embeddings] for c in chunks] == [c["fixes"] for c in part["chunks"]]


# The schedules documented in the host's prompt_parser.py, for 10 steps.
HOST_SCHEDULES = {
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "[a|(b:1.1)]": [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)],
    "[fe|]male": [(s, "female" if s % 2 else "male") for s in range(1, 11)],
    "[fe|||]male": [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)],
}


@pytest.mark.parametrize("prompt", list(HOST_SCHEDULES))
def test_prompt_schedules_as_documented_by_the_host(prompt):
    assert prompt_schedule(prompt, 10) == HOST_SCHEDULES[prompt]


def test_the_long_prompt_moves_the_words_after_the_last_comma_to_the_next_chunk(tokenizer):
    long_prompt = next(p for p in CASES if p.startswith("masterpiece,"))
    result = read_prompt(long_prompt, "cat, dog, barn", tokenizer=tokenizer)
    assert result.tokens.context_length == 154
    cat, dog, barn = result.subjects
    assert cat.positions[0] < 77 and dog.positions[0] < 77  # both before the cut ...
    assert barn.positions[0] > 77  # ... and "a red barn" after it, in the second chunk


@pytest.mark.parametrize(
    ("prompt", "subjects", "expected"),
    [
        ("a cat and a dog", "cat, dog", [[2], [5]]),
        ("a cat and a red apple", "cat, apple", [[2], [6]]),
        ("a red clock and a blue apple", "clock, apple", [[3], [7]]),
        ("a cat with a crown", "cat, crown", [[2], [5]]),
        ("a (cat:1.3) and a ((dog))", "cat, dog", [[2], [5]]),
        ("a [cat] and a dog", "cat, dog", [[2], [5]]),
        ("a cat BREAK and a dog", "cat, dog", [[2], [77 + 3]]),
        ("a [cat:dog:5] on a sofa", "cat, sofa", [[2], [5]]),
        ("a [cat|dog] on a sofa", "cat, sofa", [[2], [5]]),
        ("a cat AND a dog", "cat, dog", [[2], [77 + 2]]),
        ("A Cat, and a DOG!", "cat, Dog", [[2], [6]]),
        ("a cat and a dog <lora:foo:0.8>", "cat, dog", [[2], [5]]),
        ("a cat and a dog", "#2, #5", [[2], [5]]),
        ("a photo of a hippopotamus and a caterpillar", "hippopotamus, caterpillar", [[5, 6, 7], [10]]),
        ("a red apple and a green apple", "red apple, green apple", [[2, 3], [6, 7]]),
        ("a cat, the cat and a dog", "cat, dog", [[2, 5], [8]]),
    ],
)
def test_subject_positions(prompt, subjects, expected, tokenizer):
    found = read_prompt(prompt, subjects, tokenizer=tokenizer).subjects
    assert [list(s.positions) for s in found] == expected


def test_a_missing_subject_shows_the_prompts_words(tokenizer):
    with pytest.raises(SubjectError, match=r"'horse' is not in the prompt.*a#1, cat#2, and#3, a#4, dog#5"):
        read_prompt("a cat and a dog", "cat, horse", tokenizer=tokenizer)
    with pytest.raises(SubjectError, match="'cat' and '#2' share token position 2"):
        read_prompt("a cat and a dog", "cat, #2", tokenizer=tokenizer)
    with pytest.raises(SubjectError, match=r"position\(s\) \[9\]"):
        read_prompt("a cat and a dog", "#9", tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat and a dog", ["cat", "dog"]),
        ("a cat and a red apple", ["cat", "apple"]),
        ("a photo of a hippopotamus and a caterpillar", ["hippopotamus", "caterpillar"]),
        ("an astronaut riding a horse on the moon", ["astronaut", "horse", "moon"]),
        ("two cats sitting next to three dogs", ["cats", "dogs"]),
        ("1girl, forest, masterpiece", []),
    ],
)
def test_automatic_subjects(prompt, expected, tokenizer):
    found = read_prompt(prompt, "", tokenizer=tokenizer).subjects
    assert [s.text for s in found] == expected
    assert all(s.auto for s in found)


def _cli(*args):
    return run_cli("tokens", *args)


def test_tokens_command_prints_json_positions():
    completed = _cli("a cat and a red apple", "--subjects", "cat, apple")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert [(s["text"], s["positions"]) for s in report["subjects"]] == [("cat", [2]), ("apple", [6])]
    assert [t["text"] for t in report["tokens"]] == ["a", "cat", "and", "a", "red", "apple"]
    assert [t["position"] for t in report["tokens"]] == [1, 2, 3, 4, 5, 6]


def test_tokens_command_fails_clearly():
    completed = _cli("a cat and a dog", "--subjects", "horse")
    assert completed.returncode == 2
    assert "'horse' is not in the prompt" in completed.stderr
    assert completed.stdout == ""
