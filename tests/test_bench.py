"""The benchmark's method: variants take their steps in turns, ratios are paired by round, and the report
says what each figure is (checked on one short run of the tiny model)."""

from __future__ import annotations

import pytest
from helpers import run_cli

from initno.bench import ratios, turns


def test_variants_take_their_steps_in_turns_abba():
    assert turns(["bare", "initno", "official-emulated"], 3) == [
        ["bare", "initno", "official-emulated"],
        ["official-emulated", "initno", "bare"],
        ["bare", "initno", "official-emulated"],
    ]


def test_ratio_is_the_median_of_each_rounds_ratio():
    # The second round ran while a neighbour slowed everything down twofold: paired by round, no matter.
    times = {"bare": [10.0, 20.0, 10.0], "initno": [6.0, 12.0, 5.0]}
    assert ratios(times) == {"bare": 1.0, "initno": pytest.approx(0.6)}  # the median of 0.6, 0.6 and 0.5


def test_the_report_names_its_figures():
    completed = run_cli("--tiny", "--repeats", "2", "--official", module="initno.bench")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert "1 thread(s) per worker; median of 2, variants in turns (ABBA)" in lines[0]
    assert lines[1].startswith("load average (1 min): ") and lines[1].endswith(" CPUs")
    header = "variant cpu time wall time ratio live peak ratio process peak ratio"
    assert lines[3].split() == header.split()
    rows = {line.split()[0]: line.split() for line in lines[4:7]}
    assert list(rows) == ["bare", "initno", "official-emulated"]
    assert rows["bare"][3] == rows["bare"][6] == rows["bare"][9] == "1.00"
    assert any(line.startswith("official-emulated: ") and "emulated" in line for line in lines[7:])
    assert any("glibc returning freed memory at once" in line for line in lines[7:])
    assert any("default allocator, weights included" in line for line in lines[7:])


def test_the_guidance_benchmark_measures_both_steps_on_the_tiny_model(capsys):
    from initno import bench_guidance

    assert bench_guidance.main(["--tiny", "--size", "64", "--repeats", "1"]) == 0
    ratio = float(capsys.readouterr().out.split("ratio guided / plain: ")[1].split()[0])
    assert ratio > 1  # a guided step is a plain step plus a guidance pass
