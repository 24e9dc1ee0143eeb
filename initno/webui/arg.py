"""One argument of the extension: its type, range and choices, and the conversion of a value from the UI,
the API, a pasted infotext or an X/Y/Z axis to it, with a message naming the argument when it does not fit.
Every range check of the WebUI's values happens here. Pure Python (no `modules` import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    choices: tuple[tuple[str, str], ...] | None = None
    """(value, label) pairs of a choice: the API and the infotext use the value, the UI shows the label."""
    check: Callable[[str], Any] | None = None
    """For text: raises ValueError saying what is wrong with the text."""

    def convert(self, value: Any) -> Any:
        """`value` as this argument's type, or ArgumentError naming the argument."""
        if self.kind is bool:
            return self._convert_bool(value)
        if self.choices is not None:
            return self._convert_choice(value)
        if self.kind is str:
            if not isinstance(value, str):
                raise ArgumentError(f"InitNO argument {self.name!r} must be str, got {value!r}")
            return self._check(value)
        try:
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

    def _check(self, text: str) -> str:
        if self.check is not None:
            try:
                self.check(text)
            except ValueError as error:
                raise ArgumentError(f"InitNO argument {self.name!r}: {error}") from None
        return text

    def _convert_choice(self, value: Any) -> str:
        """One of the values, or its label as the UI shows it (any case)."""
        if isinstance(value, str):
            wanted = value.strip().lower()
            for choice, label in self.choices:
                if wanted in (choice.lower(), label.lower()):
                    return choice
        known = ", ".join(repr(choice) for choice, _ in self.choices)
        raise ArgumentError(f"InitNO argument {self.name!r} must be one of {known}, got {value!r}")

    def label_of(self, value: str) -> str:
        return dict(self.choices or ())[value]
