"""Saved `eval` reports pooled and compared: `python -m initno compare REPORT [REPORT ...]`.

A run too long for one session is split by seeds and pooled here, and methods run in different reports
are compared on the (prompt, seed) pairs both have. Nothing is sampled again: the reports' per-image
verdicts are the data, so the numbers are those the runs measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import evaluate


@dataclass(frozen=True)
class Pooled:
    images: list[dict]
    """Every image once, as `evaluate.verdicts` records it."""
    methods: list[str]
    """In the order the reports first have them."""
    best_of: int | None
    """best-of-n's n, where the reports that ran it agree."""


def read(paths: Sequence[Path | str]) -> list[dict]:
    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no eval report at {path} (write one with `eval --report FILE`)") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not an eval report: {error}") from None
        if not isinstance(report, dict) or "images" not in report:
            raise ValueError(f"{path} is not an eval report: it has no per-image verdicts ('images')")
        reports.append(report)
    return reports


def pool(reports: Sequence[dict]) -> Pooled:
    """The images of all `reports`. A method must have been run with the same settings, thresholds and
    model wherever it appears, and an image two reports share must have the same verdict in both: pooling
    is for runs over other seeds or other methods, never for averaging two samplings of one image."""
    images: dict[tuple, dict] = {}
    setting_of: dict[str, tuple] = {}
    models = {report.get("model") for report in reports} - {None}
    if len(models) > 1:
        raise ValueError(f"the reports are of different models ({', '.join(sorted(models))}); compare one model's")
    for report in reports:
        settings = (json.dumps(report.get("changed_params", {}), sort_keys=True), json.dumps(report.get("thresholds")))
        for image in report["images"]:
            method = image["method"]
            # best-of-n's n is in the report, not in changed_params, unless --n set it
            key = (*settings, report.get("best_of")) if method == "best-of-n" else settings
            if setting_of.setdefault(method, key) != key:
                raise ValueError(f"{method} was run with other settings or thresholds in another report: "
                                 f"{setting_of[method]} against {key}")  # fmt: skip
            key = (method, image["prompt"], image["seed"])
            known = images.setdefault(key, image)
            if (known["present"], known["fused"]) != (image["present"], image["fused"]):
                raise ValueError(f"{method} on {image['prompt']!r}, seed {image['seed']}: different verdicts in two "
                                 "reports (sampled twice); pool reports of other seeds or other methods")  # fmt: skip
    methods = list(dict.fromkeys(method for method, _, _ in images))
    best_ofs = {report["best_of"] for report in reports if report.get("best_of")}
    return Pooled(list(images.values()), methods, best_ofs.pop() if len(best_ofs) == 1 else None)


def compare(pooled: Pooled, against: str | None = None) -> list[dict]:
    """`evaluate.summarise`'s rows over the pooled images, with `against` as a further paired reference."""
    if against is not None and against not in pooled.methods:
        raise ValueError(f"--against {against}: no report has it; they have {', '.join(pooled.methods)}")
    return evaluate.summarise(pooled.images, pooled.methods, pooled.best_of, against)
