"""InitNO (initial noise optimisation, Guo et al., CVPR 2024) for Stable Diffusion UNets.

The core (`attention`, `scores`, `optimize`, `params`, `prompt`, `subjects`, ...) imports torch and numpy only;
`initno.webui` is the AUTOMATIC1111 glue. Entry point for other code:

    from initno.optimize import Denoiser, ImageRequest, optimize_noise
    results = optimize_noise(Denoiser(unet, apply_model, timestep), [ImageRequest(noise, seed, cond, subjects)])
"""
