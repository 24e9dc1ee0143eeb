"""The methods the package runs, by the identifier the API, the infotext, the X/Y/Z axis and the code use.

One table: each method's identifier, its name in messages, its label in the WebUI, and what it does (it
chooses the initial noise among candidates, it optimises the initial noise, it guides the first sampling
steps, its guidance refines on the augmented loss). Everything else (the WebUI's choices, which settings
apply, the infotext keys, the diagnostics' series) is read from it, so a new method is one more row here
plus its own code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .selection import LookaheadParams

LOOKAHEAD = "lookahead"
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
    selects_noise: bool = False
    """Chooses the initial noise among candidates by their attention a few sampling steps ahead
    (`initno.selection.select_by_lookahead`)."""


def lookahead_label(params: LookaheadParams | None = None) -> str:
    """What lookahead costs at its defaults, in the unit users know: sampling steps of one image (each two UNet
    passes with classifier-free guidance; its passes are forward only)."""
    params = params or LookaheadParams()
    steps = round(params.passes / params.passes_per_step)
    return f"Fast: choose the best of {params.candidates} noises (≈ {steps} sampling step{'s' * (steps != 1)})"


METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method(LOOKAHEAD, "Lookahead", lookahead_label(), False, False, selects_noise=True),
        Method(INITNO, "InitNO", "Optimise the noise", optimises_noise=True, guides_sampling=False),
        Method(INITNO_PLUS, "InitNO+", "Noise + sampling guidance (InitNO+)", True, True, augmented=True),
        Method(ATTEND_AND_EXCITE, "Attend-and-Excite", "Sampling guidance only (Attend-and-Excite)", False, True),
    )
}
"""In the order the WebUI offers them; the first is the default."""

DEFAULT = next(iter(METHODS))
BEFORE_LOOKAHEAD = INITNO
"""The default before lookahead was added: what an infotext without a method was made with."""
GUIDED = tuple(m.id for m in METHODS.values() if m.guides_sampling)
"""The methods with sampling guidance (`initno.guidance.GuidanceSettings.method`)."""


def method_of(identifier: str) -> Method:
    """The method with this identifier; ValueError naming the known ones otherwise."""
    try:
        return METHODS[identifier]
    except KeyError:
        raise ValueError(f"unknown method {identifier!r}; methods: {', '.join(METHODS)}") from None
