"""`python -m initno compare`: saved eval reports pooled over seeds and compared across runs, from their
per-image verdicts, with the same statistics as `eval` (numbers by hand below)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from initno.miniature import reports

# all subjects present, by (prompt, seed); seeds 0-1 in one report, 2-3 in the other
PLAIN = {"p1": [True, False, False, False], "p2": [False, False, True, False]}
LOOKAHEAD = {"p1": [True, True, True, False], "p2": [True, False, True, True]}


def image(method, prompt, seed, hit, passes=0):
    return {"prompt": prompt, "seed": seed, "method": method, "present": [True, hit], "fused": False,
            "valid_at_start": None, "valid_at_end": None, "passes": passes, "chosen": None}  # fmt: skip


def report(seeds, methods, changed=None, model="miniature", extra=()):
    images = [image(m, p, s, hits[p][s], passes) for m, hits, passes in methods for p in hits for s in seeds]
    return {"model": model, "changed_params": changed or {}, "thresholds": None, "best_of": None,
            "images": images + list(extra)}  # fmt: skip


def two_halves():
    first = report([0, 1], [("plain", PLAIN, 0), ("lookahead", LOOKAHEAD, 20)])
    initno_hits = {"p1": [None, None, False, True], "p2": [None, None, True, True]}
    second = report([2, 3], [("plain", PLAIN, 0), ("lookahead", LOOKAHEAD, 20), ("initno", initno_hits, 24)])
    return first, second


def test_pooled_halves_give_the_whole_runs_shares_and_paired_tests():
    """8 images a method. lookahead (the WebUI's Fast) 6/8 against plain 2/8: 4 pairs won, none lost,
    exact McNemar p = 2·(1/2)^4 = 0.125, +50 points. initno ran only on seeds 2-3 (4 pairs): 3/4; against
    plain (1/4 there) 2 won, 0 lost, p = 0.5; against lookahead (3/4 there) 1 won (p1 seed 3), 1 lost (p1
    seed 2), p = 1."""
    rows = reports.compare(reports.pool(two_halves()), against="lookahead")
    plain, lookahead, initno = rows
    assert [r["method"] for r in rows] == ["plain", "lookahead", "initno"]
    assert [(r["images"], r["all_present"], r["passes"]) for r in rows] == [(8, 0.25, 0), (8, 0.75, 20), (4, 0.75, 24)]
    assert (lookahead["vs_plain"]["wins"], lookahead["vs_plain"]["losses"], lookahead["vs_plain"]["pairs"]) == (4, 0, 8)
    assert lookahead["vs_plain"]["p"] == pytest.approx(0.125) and lookahead["vs_plain"]["difference"] == 0.5
    assert (initno["vs_plain"]["wins"], initno["vs_plain"]["losses"], initno["vs_plain"]["pairs"]) == (2, 0, 4)
    assert initno["vs_plain"]["p"] == pytest.approx(0.5)
    assert (initno["vs_against"]["wins"], initno["vs_against"]["losses"], initno["vs_against"]["p"]) == (1, 1, 1.0)
    assert lookahead["vs_against"] is None and plain["vs_best_of_n"] is None


def test_pooling_refuses_what_would_mix_two_measurements():
    first, second = two_halves()
    resampled = report([1], [("plain", {"p1": [None, True], "p2": [None, False]}, 0)])  # p1 seed 1 was a miss
    with pytest.raises(ValueError, match=r"plain on 'p1', seed 1: different verdicts"):
        reports.pool([first, resampled])
    with pytest.raises(ValueError, match="lookahead was run with other settings"):
        reports.pool([first, report([2, 3], [("lookahead", LOOKAHEAD, 20)], changed={"candidates": 8})])
    fives, twenties = ({**report([s], [("best-of-n", PLAIN, n)]), "best_of": n} for s, n in ((0, 5), (2, 20)))
    with pytest.raises(ValueError, match="best-of-n was run with other settings"):
        reports.pool([fives, twenties])
    with pytest.raises(ValueError, match="different models"):
        reports.pool([first, report([2, 3], [("plain", PLAIN, 0)], model="miniature-16")])
    with pytest.raises(ValueError, match="--against select: no report has it"):
        reports.compare(reports.pool([first, second]), against="select")


def test_compare_prints_the_pooled_table_and_names_a_bad_file(tmp_path):
    paths = []
    for index, half in enumerate(two_halves()):
        paths.append(tmp_path / f"half{index}.json")
        paths[-1].write_text(json.dumps(half))
    completed = run_cli("compare", *map(str, paths), "--against", "lookahead")
    assert completed.returncode == 0, completed.stderr
    assert "images: plain 8, lookahead 8, initno 4" in completed.stdout
    assert "vs lookahead" in completed.stdout and "+50.0" in completed.stdout
    (tmp_path / "other.json").write_text("[]")
    refused = run_cli("compare", str(tmp_path / "other.json"))
    assert refused.returncode == 2 and "has no per-image verdicts" in refused.stderr
