"""The hosts InitNO runs on, one adapter each (`base.Host`); `host_of` is the one place that tells them apart.

- `a1111`: AUTOMATIC1111 WebUI 1.10 and newer;
- `forge`: Forge 2 (lllyasviel/stable-diffusion-webui-forge, `backend/`);
- `reforge`: reForge (Panchovix/stable-diffusion-webui-reForge, `ldm_patched/`).
"""

from __future__ import annotations

from .a1111 import A1111
from .base import Host
from .forge import Forge2
from .reforge import ReForge

__all__ = ["Host", "host_of"]


def host_of(model) -> Host:
    """The adapter for the loaded model: the Forge family puts its patcher on the model (`forge_objects`),
    and Forge 2's models are its own classes (backend/diffusion_engine/), reForge's A1111's ldm/sgm ones."""
    if not hasattr(model, "forge_objects"):
        return A1111(model)
    if type(model).__module__.partition(".")[0] == "backend":
        return Forge2(model)
    return ReForge(model)
