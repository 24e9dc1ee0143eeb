"""The knobs of the method, with the official values as defaults (docs/method.md, "Official defaults").

`InitNOParams` is the one source for the engine's settings; the WebUI builds its controls, API
validation, infotext keys and X/Y/Z axes from `PARAMETERS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _knob(default, label: str, minimum, maximum, *, step=None, advanced: bool = False, help: str = ""):
    metadata = {"label": label, "minimum": minimum, "maximum": maximum, "step": step, "advanced": advanced}
    return field(default=default, metadata={**metadata, "help": help})


@dataclass(frozen=True)
class InitNOParams:
    max_rounds: int = _knob(5, "Max rounds", 1, 20, step=1, help="Restarts from fresh noise before the fallback run.")
    steps_per_round: int = _knob(10, "Steps per round", 1, 100, step=1, help="UNet passes per round.")
    fallback_steps: int = _knob(
        50,
        "Fallback steps",
        0,
        200,
        step=1,
        help="UNet passes of the last run, from the best round's noise, if no round was valid (0: none).",
    )
    cross_threshold: float = _knob(
        0.2,
        "Cross-attention threshold",
        0.0,
        1.0,
        step=0.01,
        help="Valid when every subject's response loss (1 - peak attention) is below this.",
    )
    conflict_threshold: float = _knob(
        0.3,
        "Self-attention threshold",
        0.0,
        0.5,
        step=0.01,
        help="Valid when the subjects' self-attention overlap is below this.",
    )
    learning_rate: float = _knob(1e-2, "Learning rate", 1e-4, 1.0, step=1e-3, advanced=True, help="Adam step size.")
    adam_eps: float = _knob(1e-3, "Adam epsilon", 1e-8, 1.0, advanced=True, help="Adam's epsilon (official: 1e-3).")
    kl_bound: float = _knob(
        1e-3,
        "KL bound",
        1e-6,
        0.1,
        step=1e-4,
        advanced=True,
        help="How far (mean KL) the optimised noise may move from N(0, I).",
    )
    kl_max_steps: int = _knob(
        1000,
        "KL projection steps",
        1,
        100_000,
        advanced=True,
        help="Bound on the Adam steps that pull the noise back into the KL ball after each update.",
    )

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"InitNO parameter {spec.name!r} must be a number, got {value!r}")
            if spec.type == "int" and int(value) != value:
                raise ValueError(f"InitNO parameter {spec.name!r} must be a whole number, got {value!r}")
            low, high = spec.metadata["minimum"], spec.metadata["maximum"]
            if not low <= value <= high:
                raise ValueError(f"InitNO parameter {spec.name!r} must be between {low} and {high}, got {value!r}")
            if spec.type == "int":
                object.__setattr__(self, spec.name, int(value))

    def replace(self, **changes) -> InitNOParams:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_assignments(cls, assignments: list[str]) -> InitNOParams:
        """The official defaults with `NAME=VALUE` changes (e.g. `conflict_threshold=0.5`), validated."""
        specs = {spec.name: spec for spec in dataclasses.fields(cls)}
        changes = {}
        for assignment in assignments:
            name, equals, text = assignment.partition("=")
            name = name.strip()
            if not equals or name not in specs:
                raise ValueError(f"{assignment!r}: expected NAME=VALUE with NAME one of {', '.join(specs)}")
            try:
                changes[name] = float(text)
            except ValueError:
                raise ValueError(f"InitNO parameter {name!r} must be a number, got {text.strip()!r}") from None
        return cls(**changes)

    @property
    def max_passes(self) -> int:
        """UNet passes per image at worst: every round, then the fallback, which continues the best round
        at its last step when it is longer than the round (5 × 10 + 50 − 9 = 91 by default)."""
        repeated = self.steps_per_round - 1 if self.fallback_steps > self.steps_per_round - 1 else 0
        return self.max_rounds * self.steps_per_round + self.fallback_steps - repeated


PARAMETERS = dataclasses.fields(InitNOParams)
