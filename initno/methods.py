"""The methods the package runs, by the identifier the API, the infotext, the X/Y/Z axis and the code use.

One table: each method's identifier, its name in messages, its label in the WebUI, and what it does (it
optimises the initial noise, it guides the first sampling steps, its guidance refines on the augmented
loss). Everything else (the WebUI's choices, which settings apply, the infotext keys, the diagnostics'
series) is read from it, so a new method is one more row here plus its own code.
"""

from __future__ import annotations

from dataclasses import dataclass

INITNO = "initno"
INITNO_PLUS = "initno+"
ATTEND_AND_EXCITE = "ae"


@dataclass(frozen=True)
class Method:
    id: str
    name: str
    """In messages, the progress bar and the infotext's outcome ("InitNO+, 25 steps, …")."""
    label: str
    """The WebUI's choice."""
    optimises_noise: bool
    """Runs the initial noise optimisation before sampling."""
    guides_sampling: bool
    """Moves the latent at the start of the first sampling steps (`initno.guidance`)."""
    augmented: bool = False
    """Its guidance refines on the augmented loss (cross, self, clean, alignment), not on cross alone."""


METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method(INITNO, "InitNO", "Optimise the noise", optimises_noise=True, guides_sampling=False),
        Method(INITNO_PLUS, "InitNO+", "Noise + sampling guidance (InitNO+)", True, True, augmented=True),
        Method(ATTEND_AND_EXCITE, "Attend-and-Excite", "Sampling guidance only (Attend-and-Excite)", False, True),
    )
}
"""In the order the WebUI offers them; the first is the default."""

DEFAULT = next(iter(METHODS))
GUIDED = tuple(m.id for m in METHODS.values() if m.guides_sampling)
"""The methods with sampling guidance (`initno.guidance.GuidanceSettings.method`)."""


def method_of(identifier: str) -> Method:
    """The method with this identifier; ValueError naming the known ones otherwise."""
    try:
        return METHODS[identifier]
    except KeyError:
        raise ValueError(f"unknown method {identifier!r}; methods: {', '.join(METHODS)}") from None
