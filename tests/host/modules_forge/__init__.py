"""Stand-in for the part of reForge's `modules_forge` package (Panchovix/stable-diffusion-webui-reForge at
3b56b268) that InitNO's reForge adapter touches: the sampler's prepare and cleanup. Facts: docs/notes/forge.md."""
