"""The extension's arguments: one table that the UI controls, the API validation, the infotext keys,
the Settings page and the X/Y/Z axes are all built from, and each argument's conversion of a value from the
UI, the API, a pasted infotext or an X/Y/Z axis, with a message naming the argument when it does not fit.
Pure Python (no `modules` import), so the API rules are testable on their own.

An argument list reaches the script either positionally (UI order, as A1111 passes them, and as API
clients send `"args": [true, "cat, dog", ...]`) or as a single dict of named arguments
(`"args": [{"subjects": "cat, dog", "max_rounds": 5}]`). Missing ones take their defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import methods
from ..calibration import CALIBRATED, OFFICIAL, THRESHOLD_PARAMS
from ..guidance import GuidanceSettings, parse_refinements
from ..params import PARAMETERS, InitNOParams
from ..selection import LookaheadParams


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
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
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


METHOD_CHOICES = tuple((method.id, method.label) for method in methods.METHODS.values())
"""The method choice: (API and infotext value, what the UI shows)."""

GUIDANCE_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(GuidanceSettings)}
"""The sampling guidance's official values (`initno.guidance.GuidanceSettings`)."""

GUIDANCE_ARGS = ("guided_fraction", "step_scale", "max_refinement", "refinement_schedule")
"""Arguments of the sampling guidance (InitNO+, Attend-and-Excite): left out of the infotext for the methods
without guidance (Fast, InitNO)."""

THRESHOLD_CHOICES = ((CALIBRATED, "Calibrated to the model"), (OFFICIAL, "Official (SD1.4's)"))
"""Where the noise optimisation's validity thresholds come from: a calibration of the loaded model
(`initno.webui.calibration`), or the Cross-/Self-attention threshold settings (official: 0.2, 0.3)."""
BEFORE_CALIBRATION = OFFICIAL
"""What an infotext of the noise optimisation without `InitNO thresholds` was made with."""
THRESHOLD_HELP = " Used with Thresholds: official; calibrated thresholds come from the loaded model."

LOOKAHEAD_DEFAULTS = LookaheadParams()
LOOKAHEAD_ARGS = ("lookahead_candidates", "lookahead_steps")
"""Arguments of lookahead selection: left out of the infotext for the other methods."""

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
                help=meta["help"] + (THRESHOLD_HELP if spec.name in THRESHOLD_PARAMS else ""),
            )
        )
    return args


ARGS: tuple[Arg, ...] = (
    Arg("enabled", False, "Enable InitNO", "InitNO", bool, help="Run the chosen method for this generation."),
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
    # Positional API calls address the arguments by this order: a new argument goes at the end, so that
    # calls written without it keep working.
    Arg(
        "method",
        methods.DEFAULT,
        "Method",
        "InitNO method",
        str,
        choices=METHOD_CHOICES,
        help="Fast (lookahead) chooses, among noises drawn from the seed, the one whose attention is best (at "
        "the first step, or a few sampling steps ahead); InitNO "
        "optimises the noise; InitNO+ also guides the first sampling steps (the official script); "
        "Attend-and-Excite only guides the sampling.",
    ),
    Arg(
        "guided_fraction",
        GUIDANCE_DEFAULTS["guided_fraction"],
        "Guided fraction of the steps",
        "InitNO guided fraction",
        float,
        0.0,
        1.0,
        0.05,
        help="Sampling guidance moves the latent at the steps before this fraction of the steps (official: 25 of 50).",
    ),
    Arg(
        "step_scale",
        GUIDANCE_DEFAULTS["step_scale"],
        "Guidance step size",
        "InitNO guidance step size",
        float,
        0.0,
        100.0,
        0.5,
        help="Size of each guidance update at the first step, shrinking to 0.71× at the last step (official: 20).",
    ),
    Arg(
        "max_refinement",
        GUIDANCE_DEFAULTS["max_refinement"],
        "Max refinement iterations",
        "InitNO max refinement",
        int,
        1,
        100,
        1,
        help="Bound on the updates of each iterative refinement (official: 20).",
    ),
    Arg(
        "refinement_schedule",
        "",
        "Refinement schedule",
        "InitNO refinement schedule",
        str,
        advanced=True,
        check=parse_refinements,
        help="Iterative refinement as step-of-50:cross[:self] entries, e.g. '10:0.2:0.3, 20:0.2:0.3' (InitNO+'s); "
        "empty: the method's official schedule; 'none': no refinement.",
        xyz=False,
    ),
    Arg(
        "lookahead_candidates",
        LOOKAHEAD_DEFAULTS.candidates,
        "Noises to choose from",
        "InitNO candidates",
        int,
        2,
        16,
        1,
        help="Fast: the seed's own noise and the restarts drawn from the seed; each costs 2 UNet passes per "
        "step ahead and one to score it.",
    ),
    Arg(
        "lookahead_steps",
        LOOKAHEAD_DEFAULTS.steps,
        "Steps ahead",
        "InitNO lookahead steps",
        int,
        0,
        20,
        1,
        help="Fast: sampling steps each noise runs before its attention is scored (at most the generation's "
        "steps − 1); 0 scores the noises themselves, one UNet pass each.",
    ),
    Arg(
        "thresholds",
        CALIBRATED,
        "Thresholds",
        "InitNO thresholds",
        str,
        choices=THRESHOLD_CHOICES,
        help="InitNO and InitNO+: when the noise counts as valid. Calibrated: the loaded model's own scores of "
        "random noises (their best quarter), measured once per model and size; official: the Cross- and "
        "Self-attention thresholds (0.2 and 0.3, SD1.4's statistics).",
    ),
)
"""In UI (and positional API) order."""

BY_NAME = {arg.name: arg for arg in ARGS}


@dataclass(frozen=True)
class ScriptArgs:
    """Built by `from_named`, from the defaults in `ARGS`."""

    enabled: bool
    subjects: str
    params: InitNOParams
    diagnostics: bool
    method: str
    guided_fraction: float
    step_scale: float
    max_refinement: int
    refinement_schedule: str
    lookahead_candidates: int
    lookahead_steps: int
    thresholds: str

    @property
    def optimises_noise(self) -> bool:
        return methods.method_of(self.method).optimises_noise

    @property
    def selects_noise(self) -> bool:
        return methods.method_of(self.method).selects_noise

    @property
    def calibrated(self) -> bool:
        """The noise optimisation's validity thresholds come from a calibration of the loaded model."""
        return self.optimises_noise and self.thresholds == CALIBRATED

    @property
    def lookahead(self) -> LookaheadParams | None:
        """Lookahead selection's settings; None for the other methods."""
        if not self.selects_noise:
            return None
        return LookaheadParams(candidates=self.lookahead_candidates, steps=self.lookahead_steps)

    @property
    def guidance(self) -> GuidanceSettings | None:
        """The sampling guidance's settings; None for a method without (InitNO alone)."""
        if not methods.method_of(self.method).guides_sampling:
            return None
        return GuidanceSettings(
            self.method,
            guided_fraction=self.guided_fraction,
            step_scale=self.step_scale,
            max_refinement=self.max_refinement,
            refinements=parse_refinements(self.refinement_schedule),
        )

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
        engine = {spec.name: values.pop(spec.name) for spec in PARAMETERS}
        try:
            params = InitNOParams(**engine)
        except ValueError as error:
            raise ArgumentError(str(error)) from None
        return cls(params=params, **values)

    def as_named(self) -> dict[str, Any]:
        named = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        named.update(dataclasses.asdict(self.params))
        return {arg.name: named[arg.name] for arg in ARGS}

    def replace(self, **changes) -> ScriptArgs:
        return ScriptArgs.from_named({**self.as_named(), **changes})

    def infotext(self) -> dict[str, Any]:
        """The settings for the PNG info: every parameter that applies to the method (the outcome is
        added by the job). Settings at their default that say "nothing chosen" (automatic subjects,
        diagnostics off, the official refinement schedule) are left out, as keys, not as None values: the
        API's `info` shows `extra_generation_params` as they are. The method is always there: an infotext
        without it was written when InitNO was the default (`methods.BEFORE_LOOKAHEAD`). So are the thresholds
        for the noise optimisation: without them, it predates calibration (`BEFORE_CALIBRATION`); with
        calibrated ones, the Cross-/Self-attention threshold settings are not used and left out."""
        named = self.as_named()
        optional = ("subjects", "diagnostics", "refinement_schedule")
        left_out = {"enabled"} | {name for name in optional if not named[name]}
        if self.guidance is None:
            left_out |= set(GUIDANCE_ARGS)
        if not self.selects_noise:
            left_out |= set(LOOKAHEAD_ARGS)
        if not self.optimises_noise:
            left_out |= {spec.name for spec in PARAMETERS} | {"thresholds"}
        if self.calibrated:
            left_out |= set(THRESHOLD_PARAMS)
        return {arg.infotext: named[arg.name] for arg in ARGS if arg.name not in left_out}
