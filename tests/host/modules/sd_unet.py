"""Mirrors modules/sd_unet.py: `current_unet` is set when an alternative UNet (e.g. TensorRT) is active."""

current_unet = None


def apply_unet(option=None):
    pass
