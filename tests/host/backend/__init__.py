"""Stand-in for the parts of Forge 2's `backend` package (lllyasviel/stable-diffusion-webui-forge at
dfdcbab6, 2025-06-26) that InitNO's glue touches; each module cites the file it mirrors. Facts:
docs/notes/forge.md."""
