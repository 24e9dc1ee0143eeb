"""The extension's arguments: one table that the UI controls, the API validation, the infotext keys,
the Settings page and the X/Y/Z axes are all built from. Pure Python (no `modules` import), so the
API rules are testable on their own.

An argument list reaches the script either positionally (UI order, as A1111 passes them, and as API
clients send `"args": [true, "cat, dog", ...]`) or as a single dict of named arguments
(`"args": [{"subjects": "cat, dog", "max_rounds": 5}]`). Missing ones take their defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..params import PARAMETERS, InitNOParams


class ArgumentError(ValueError):
    """A bad argument; the message names it."""


@dataclass(frozen=True)
class Arg:
    name: str
    default: Any
    label: str
    infotext: str
    kind: type
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    advanced: bool = False
    help: str = ""
    xyz: bool = True

    def convert(self, value: Any) -> Any:
        """`value` as this argument's type, or ArgumentError naming the argument."""
        if self.kind is bool:
            return self._convert_bool(value)
        try:
            if self.kind is str:
                if not isinstance(value, str):
                    raise ValueError(value)
                return value
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if self.kind is int:
                if number != int(number):
                    raise ValueError(value)
                number = int(number)
        except (TypeError, ValueError):
            raise ArgumentError(f"InitNO argument {self.name!r} must be {self.kind.__name__}, got {value!r}") from None
        if self.minimum is not None and not self.minimum <= number <= self.maximum:
            raise ArgumentError(
                f"InitNO argument {self.name!r} must be between {self.minimum} and {self.maximum}, got {value!r}"
            )
        return number

    def _convert_bool(self, value: Any) -> bool:
        """A JSON boolean, or its text "true"/"false" (any case) as an infotext or an X/Y/Z axis writes it.
        Anything else ("no", "0", 1, None) is refused: a switch that silently reads as on or off is worse
        than a message."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ArgumentError(f"InitNO argument {self.name!r} must be a boolean (true or false), got {value!r}")


ENGINE_INFOTEXT = {
    "max_rounds": "InitNO max rounds",
    "steps_per_round": "InitNO steps per round",
    "fallback_steps": "InitNO fallback steps",
    "cross_threshold": "InitNO cross threshold",
    "conflict_threshold": "InitNO self threshold",
    "learning_rate": "InitNO learning rate",
    "adam_eps": "InitNO Adam eps",
    "kl_bound": "InitNO KL bound",
    "kl_max_steps": "InitNO KL steps",
}


def _engine_args() -> list[Arg]:
    args = []
    for spec in PARAMETERS:
        meta = spec.metadata
        args.append(
            Arg(
                name=spec.name,
                default=spec.default,
                label=meta["label"],
                infotext=ENGINE_INFOTEXT[spec.name],
                kind=int if spec.type == "int" else float,
                minimum=meta["minimum"],
                maximum=meta["maximum"],
                step=meta["step"],
                advanced=meta["advanced"],
                help=meta["help"],
            )
        )
    return args


ARGS: tuple[Arg, ...] = (
    Arg("enabled", False, "Enable InitNO", "InitNO", bool, help="Optimise the initial noise before sampling."),
    Arg(
        "subjects",
        "",
        "Subjects",
        "InitNO subjects",
        str,
        help="Comma-separated words or phrases of the prompt (or #positions); empty: nouns chosen automatically.",
    ),
    *_engine_args(),
    Arg(
        "diagnostics",
        False,
        "Diagnostic image",
        "InitNO diagnostics",
        bool,
        help="Add an image of the attention maps and the score trace after each generated image.",
        xyz=False,
    ),
)
"""In UI (and positional API) order."""

BY_NAME = {arg.name: arg for arg in ARGS}


@dataclass(frozen=True)
class ScriptArgs:
    enabled: bool
    subjects: str
    params: InitNOParams
    diagnostics: bool

    @classmethod
    def from_script_args(cls, values: Sequence[Any], defaults: Mapping[str, Any] | None = None) -> ScriptArgs:
        """From the script's slice of `p.script_args`: positional, or one dict of named arguments.

        `None` (what the API puts in slots it has no value for) and missing trailing values take the
        default, which `defaults` may override (the Settings page's defaults).
        """
        values = list(values)
        if values and isinstance(values[0], Mapping):
            # Sending InitNO arguments by name means InitNO on, unless they say "enabled": false. The API
            # fills the slots after the dict with the controls' defaults: they are ignored.
            return cls.from_named({**(defaults or {}), "enabled": True, **values[0]})
        if len(values) > len(ARGS):
            raise ArgumentError(f"InitNO takes at most {len(ARGS)} positional arguments, got {len(values)}")
        named = dict(defaults or {})
        named.update({arg.name: value for arg, value in zip(ARGS, values) if value is not None})
        return cls.from_named(named)

    @staticmethod
    def requests_enabled(values: Sequence[Any]) -> bool:
        """Whether these script arguments turn InitNO on (checked before validating the rest)."""
        if not values:
            return False
        if isinstance(values[0], Mapping):
            return BY_NAME["enabled"].convert(values[0].get("enabled", True))
        return values[0] is not None and BY_NAME["enabled"].convert(values[0])

    @classmethod
    def from_named(cls, named: Mapping[str, Any]) -> ScriptArgs:
        unknown = sorted(set(named) - set(BY_NAME))
        if unknown:
            raise ArgumentError(f"unknown InitNO argument(s) {unknown}; known: {', '.join(BY_NAME)}")
        values = {arg.name: arg.convert(named.get(arg.name, arg.default)) for arg in ARGS}
        engine = {spec.name: values[spec.name] for spec in PARAMETERS}
        try:
            params = InitNOParams(**engine)
        except ValueError as error:
            raise ArgumentError(str(error)) from None
        return cls(values["enabled"], values["subjects"], params, values["diagnostics"])

    def as_named(self) -> dict[str, Any]:
        engine = dataclasses.asdict(self.params)
        return {"enabled": self.enabled, "subjects": self.subjects, **engine, "diagnostics": self.diagnostics}

    def replace(self, **changes) -> ScriptArgs:
        return ScriptArgs.from_named({**self.as_named(), **changes})

    def infotext(self) -> dict[str, Any]:
        """The settings for the PNG info: every parameter (the outcome is added by the job). Empty
        subjects (automatic) and diagnostics off are left out, as keys, not as None values: the API's
        `info` shows `extra_generation_params` as they are."""
        named = self.as_named()
        left_out = {"enabled"} | {name for name in ("subjects", "diagnostics") if not named[name]}
        return {arg.infotext: named[arg.name] for arg in ARGS if arg.name not in left_out}
