"""backend/patcher/unet.py `UnetPatcher` (base.py `ModelPatcher`) and backend/modules/k_model.py `KModel`,
as far as InitNO reads them: the patcher's `model` (a `KModel` holding `diffusion_model`, its
`computation_dtype` and its noise `predictor`), `model_options["transformer_options"]` (the patches the
sampling passes the UNet), its devices; plus `events`, where the stand-in records `sampling_prepare` /
`sampling_cleanup` calls and the UNet calls of sampling, in order."""

from __future__ import annotations

import torch
from torch import nn


class Predictor:
    """backend/modules/k_prediction.py `Prediction`: its `alphas_cumprod` buffer (float32), its
    `prediction_type` ("epsilon" or "v_prediction"), and `sigma`, the schedule's sigma at a (fractional)
    timestep."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type = prediction_type
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.float().clamp(0, len(self.log_sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


class KModel(nn.Module):
    def __init__(self, diffusion_model: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.computation_dtype = torch.float32
        self.storage_dtype = torch.float32
        self.predictor = Predictor(alphas_cumprod)


class UnetPatcher:
    def __init__(self, model: KModel):
        self.model = model
        self.load_device = self.offload_device = self.current_device = torch.device("cpu")
        self.model_options = {"transformer_options": {}}
        self.events: list[tuple] = []
