"""A stand-in for the parts of AUTOMATIC1111 stable-diffusion-webui v1.10.1 (commit 82a973c0) that the
extension touches, so that its glue runs in pytest without a WebUI. Each module names the host file it
mirrors; behaviour (call order, argument slicing, no_grad/autocast scopes, RNG use, infotext format) follows
the host, the implementation is this project's own. The model is the real ldm UNet in a tiny
configuration; prompt reading uses `initno.prompt`, which tests/test_prompt.py checks against the host.
"""
