"""backend/nn/unet.py, the two classes InitNO meets, applied to a real ldm UNet by `forge_layout`:

- `CrossAttention` (:133-155): no `scale` attribute (every kernel uses `dim_head ** -0.5`), a `dim_head`
  attribute, and `forward(x, context=None, value=None, mask=None, transformer_options={})` through the
  module-level attention function (written here in the plain softmax form of backend/attention.py's
  `attention_basic`, which gives the ldm module's numbers);
- `BasicTransformerBlock` (:158-279, no patches): the residuals are added **in place** (`x += n`), after
  `norm1(x)` / `norm2(x)` saved `x` for the backward pass: what makes a naive backward through Forge 2's
  UNet fail with "one of the variables needed for gradient computation has been modified by an inplace
  operation";

and the class name `IntegratedUNet2DConditionModel` (:574) for the UNet itself, whose forward takes
`transformer_options` (:696; ldm's `UNetModel` accepts and ignores it here)."""

from __future__ import annotations

import torch
from ldm.modules.attention import BasicTransformerBlock as LdmBlock
from ldm.modules.attention import CrossAttention as LdmCrossAttention
from torch import nn

from initno.tiny import unet_context


def attention_function(q, k, v, heads, mask=None):
    batch, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.reshape(batch, -1, heads, dim_head).transpose(1, 2).flatten(0, 1) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * dim_head**-0.5
    out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
    return out.reshape(batch, heads, -1, dim_head).transpose(1, 2).reshape(batch, -1, inner)


class CrossAttention(LdmCrossAttention):
    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 (as Forge)
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value if value is not None else context)
        return self.to_out(attention_function(q, k, v, self.heads, mask))


class BasicTransformerBlock(LdmBlock):
    def forward(self, x, context=None, transformer_options={}):  # noqa: B006 (as Forge)
        n = self.norm1(x)
        n = self.attn1(n, context=None, value=None, transformer_options=transformer_options)
        x += n
        n = self.norm2(x)
        n = self.attn2(n, context=context, value=None, transformer_options=transformer_options)
        x += n
        x_skip = x
        x = self.ff(self.norm3(x))
        x += x_skip
        return x


def forge_layout(unet: nn.Module) -> nn.Module:
    """The ldm UNet, in place, with Forge 2's classes (same parameters, same numbers)."""
    for module in unet.modules():
        if isinstance(module, LdmCrossAttention):
            module.__class__ = CrossAttention
            module.dim_head = module.to_q.out_features // module.heads
            del module.scale
        elif isinstance(module, LdmBlock):
            module.__class__ = BasicTransformerBlock
    unet.__class__ = type("IntegratedUNet2DConditionModel", (type(unet),), {"forward": _one_context_forward})
    return unet


def _one_context_forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}):  # noqa: B006
    # One context for every block, as Forge's SpatialTransformer takes it (the ldm parts want one per block).
    return super(type(self), self).forward(x, timesteps=timesteps, context=unet_context(self, context), y=y)
