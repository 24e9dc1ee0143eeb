"""Regional Prompter's attention mode (hako-mikan/sd-webui-regional-prompter be62345): `hook_forwards_x`
(scripts/attention.py:119-125) sets an instance-level `forward` on every module named `*attn2*` of class
`CrossAttention` when its attention (or prompt) mode is on (scripts/rp.py:589-590, :605-606), and deletes
it again when off (scripts/rp.py:598, :713). The hooked forward (:130-135) splits the batch into
`x.shape[0] // batch_size` parts and steps its positive/negative bookkeeping (`pndealer`) on every call;
here it counts the calls and then runs the module's own attention, regions left out."""

from __future__ import annotations


class RegionalPrompter:
    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.calls = 0

    def hook_forwards(self, unet, remove: bool = False) -> None:
        for name, module in unet.named_modules():
            if "attn2" in name and module.__class__.__name__ == "CrossAttention":
                module.forward = self.hook_forward(module)
                if remove:
                    del module.forward

    def hook_forward(self, module):
        def forward(x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
            self.calls += 1
            if x.shape[0] // self.batch_size == 0:
                raise ValueError("not enough values to unpack (expected 2, got 1)")  # its split, one image in
            return type(module).forward(module, x, context=context, mask=mask)

        return forward
