"""The calibration cache's file is only a cache: whatever is damaged in it is ignored (and calibrated again),
and it is replaced whole. (The calibration itself: tests/test_selection.py; on the host:
tests/webui/test_calibration_webui.py.)"""

from __future__ import annotations

import json

import pytest

from initno import calibration
from initno.calibration import Calibration, CalibrationCache

GOOD = Calibration("sd1 | hash 0a | latent 64x64", 0.41, 0.27, 0.25, 32)


def _stored(**changes) -> dict:
    return {**vars(GOOD), **changes}


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"sd1": {"cross": ',  # cut off mid-write
        "[1, 2]",  # JSON, but not a table of calibrations
        b"\xff\xfe not text",
    ],
)
def test_a_damaged_file_is_ignored_and_replaced_by_the_next_calibration(tmp_path, content):
    path = tmp_path / "calibrations.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cache = CalibrationCache(path)
    assert cache.entries == {}
    cache.put(GOOD)
    assert CalibrationCache(path).get(GOOD.key) == GOOD
    assert not path.with_name("calibrations.json.tmp").exists()  # written beside it, then moved over it


@pytest.mark.parametrize(
    "entry",
    [
        "not a calibration",
        _stored(cross=float("nan")),
        _stored(cross=1.5),  # a response loss is at most 1
        _stored(conflict=0.7),  # a conflict is at most 0.5
        _stored(conflict=-0.1),
        _stored(cross="0.4"),
        _stored(samples=True),
        _stored(unknown_field=1),
        {k: v for k, v in _stored().items() if k != "cross"},
        _stored(version=calibration.VERSION - 1),
    ],
)
def test_an_impossible_entry_is_ignored_and_the_others_kept(tmp_path, entry):
    path = tmp_path / "calibrations.json"
    other = Calibration("sd2 | hash 0b | latent 96x96", 0.5, 0.3, 0.25, 32)
    path.write_text(json.dumps({"bad": entry, other.key: vars(other)}))
    assert CalibrationCache(path).entries == {other.key: other}


def test_a_cache_without_a_file_keeps_calibrations_in_memory():
    cache = CalibrationCache()
    cache.put(GOOD)
    assert cache.get(GOOD.key) == GOOD and cache.path is None


def test_a_file_that_cannot_be_written_raises_but_the_calibration_is_kept(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = CalibrationCache(blocker / "calibrations.json")  # its folder is a file
    with pytest.raises(FileExistsError):
        cache.put(GOOD)
    assert cache.get(GOOD.key) == GOOD
