"""Capture of the attention maps InitNO reads, on the UNet the host has loaded.

`AttentionCapture` is a context manager. While it is active, the attention modules inside the
transformer blocks whose feature map is at the capture grid (the latent downsampled `downsample`
times: 16×16 for SD1 at 512×512, i.e. `input_blocks.7/8`, `output_blocks.3/4/5`) run an explicit
forward that records what the scores need; every other module keeps whatever forward it had, so the
memory-efficient attention the host selected keeps running there. On exit every module is restored
exactly as it was found, including an instance-level `forward` that someone else had put there.

What is recorded, with its autograd graph:
- cross-attention: the softmax probabilities, computed in fp32 (B·heads, n, T);
- self-attention: the queries and keys. The forward itself runs through `scaled_dot_product_attention`,
  and only the rows the conflict score reads (one per subject, at its cross-attention peak) are ever
  materialised as probabilities, by `self_attention_rows`. Mathematically these are the rows of the
  official full maps; the saving matters for large grids (SDXL: 60 layers at 32×32).

With `checkpoint_blocks`, every transformer block runs under non-reentrant activation checkpointing
while gradients are on: its activations are recomputed in the backward pass instead of being kept
(the memory of SDXL at 1024², where 66 blocks of 1024–4096 tokens precede the last captured layer).
The recomputation replays the explicit forward without recording again. Every other attention module
then runs the fused kernel too, not the host's: a recomputation must repeat the forward exactly, and the
host's sliced attention picks its slices from the free memory, which differs in the backward pass.
`recompute_context` is entered around each recomputation, for what the host does around a UNet call
beyond autocast (A1111's `manual_cast` patches the layer classes only inside `apply_model`).

Works on the ldm and the sgm `CrossAttention` (same attributes; sgm passes context as a keyword).
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

ContextTransform = Callable[[torch.Tensor, nn.Module], tuple[torch.Tensor, torch.Tensor]]
"""(context, attention module) -> (context for keys, context for values): the host's hypernetwork hook."""

_NO_FORWARD = object()


class _ForwardStopped(BaseException):
    """Raised after the last captured layer: nothing later in the UNet influences the scores.

    Not an error, so not an `Exception`: code between the model call and the UNet that handles errors
    with `except Exception` lets it pass untouched (ControlNet's UNet forward would otherwise move its
    models to the CPU at every one of InitNO's passes)."""


def is_attention_module(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("to_q", "to_k", "to_v", "to_out", "heads"))


def is_transformer_container(module: nn.Module) -> bool:
    """A spatial transformer: receives the (B, C, h, w) feature map its attention modules work on."""
    return isinstance(getattr(module, "transformer_blocks", None), nn.ModuleList)


def capture_grid(latent_hw: tuple[int, int], downsample: int) -> tuple[int, int]:
    """The feature grid `downsample`× below the latent: each UNet downsampling halves, rounding up."""
    height, width = latent_hw
    for _ in range(int(math.log2(downsample))):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


class AttentionCapture:
    """Records attention at one grid of a UNet while active. See the module docstring.

    Use `run(fn)` for each UNet pass: it clears the previous records and, when `stop_early` is set,
    stops the pass right after the last captured layer (learned on the first complete pass).
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        downsample: int = 4,
        context_transform: ContextTransform | None = None,
        stop_early: bool = True,
        checkpoint_blocks: bool = False,
        recompute_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {downsample}")
        self.unet = unet
        self.downsample = downsample
        self.context_transform = context_transform
        self.stop_early = stop_early
        self.checkpoint_blocks = checkpoint_blocks
        self.recompute_context = recompute_context
        self.grid: tuple[int, int] | None = None
        self.grids_seen: set[tuple[int, int]] = set()
        self._cross: list[torch.Tensor] = []
        self._self: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._calls_per_pass: int | None = None
        self._calls = 0
        self._patched: dict[nn.Module, Any] = {}
        self._recording: set[nn.Module] = set()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False
        self._block_pass: str | None = None  # inside a checkpointed block: "first" or "replay"
        self._stop_pending = False

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> AttentionCapture:
        if self._active:
            raise RuntimeError("AttentionCapture is already active")
        self._active = True
        try:
            self._hooks.append(self.unet.register_forward_pre_hook(self._on_unet_input))
            containers = [m for m in self.unet.modules() if is_transformer_container(m)]
            if not containers:
                raise ValueError(f"{type(self.unet).__name__} has no transformer blocks to capture attention from")
            for container in containers:
                self._hooks.append(container.register_forward_pre_hook(self._on_container_input))
                if self.checkpoint_blocks:
                    for block in container.transformer_blocks:
                        self._patch(block, self._checkpointed(block.forward))
                        for module in block.modules():
                            if is_attention_module(module):
                                self._patch(module, types.MethodType(self._fused_forward, module))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _restore(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module, previous in self._patched.items():
            if previous is _NO_FORWARD:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._patched.clear()
        self._recording.clear()
        self.clear()
        self._active = False

    # -- passes ------------------------------------------------------------------------------------

    def clear(self) -> None:
        """Drops the records (and with them their autograd graphs)."""
        self._cross.clear()
        self._self.clear()
        self._calls = 0
        self._stop_pending = False

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Runs one UNet pass with fresh records. Returns fn's result, or None if stopped early."""
        if not self._active:
            raise RuntimeError("AttentionCapture.run() outside its `with` block")
        self.clear()
        try:
            result = fn(*args, **kwargs)
        except _ForwardStopped:
            return None
        if self._calls == 0:
            seen = ", ".join(f"{h}×{w}" for h, w in sorted(self.grids_seen)) or "none"
            raise ValueError(f"no attention layer at the capture grid {self.grid} (transformer grids seen: {seen})")
        self._calls_per_pass = self._calls
        return result

    def _on_unet_input(self, module: nn.Module, args: tuple) -> None:
        latent = args[0] if args else None
        if isinstance(latent, torch.Tensor) and latent.dim() == 4:
            grid = capture_grid(tuple(latent.shape[-2:]), self.downsample)
            if grid != self.grid:
                self.grid, self._calls_per_pass = grid, None

    def _on_container_input(self, container: nn.Module, args: tuple) -> None:
        features = args[0] if args else None
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            return
        grid = tuple(features.shape[-2:])
        self.grids_seen.add(grid)
        if grid != self.grid:
            return
        for module in container.modules():
            if is_attention_module(module) and module not in self._recording:
                self._recording.add(module)
                self._patch(module, types.MethodType(self._make_forward(grid), module))

    def _patch(self, module: nn.Module, forward: Callable) -> None:
        self._patched.setdefault(module, module.__dict__.get("forward", _NO_FORWARD))  # the first is restored
        module.forward = forward

    # -- activation checkpointing --------------------------------------------------------------------

    def _checkpointed(self, forward: Callable) -> Callable:
        capture = self

        def checkpointed_forward(x, context=None, **kwargs):
            if not torch.is_grad_enabled() or capture._block_pass is not None:
                return forward(x, context=context, **kwargs)
            passes = iter(("first",))

            def body(x, context):
                capture._block_pass = next(passes, "replay")
                try:
                    return forward(x, context=context, **kwargs)
                finally:
                    capture._block_pass = None

            # No random ops run in a block at inference, so there is no RNG state to preserve.
            out = torch.utils.checkpoint.checkpoint(
                body, x, context, use_reentrant=False, preserve_rng_state=False, context_fn=capture._contexts
            )
            if capture._stop_pending:  # the stop waits until the block is done: see `_attend`
                raise _ForwardStopped
            return out

        return checkpointed_forward

    def _contexts(self):
        """(around the forward, around the recomputation), for `checkpoint`'s `context_fn`."""
        recompute = self.recompute_context() if self.recompute_context is not None else contextlib.nullcontext()
        return contextlib.nullcontext(), recompute

    def _fused_forward(self, module, x, context=None, mask=None, **kwargs):
        """The forward of attention modules outside the capture grid while blocks are checkpointed."""
        _refuse_extras(mask, kwargs)
        q, k, v, scale = self._project(module, x, context)
        return module.to_out(_merge_heads(_fused(q, k, v, scale, module.heads), module.heads))

    # -- the explicit forward ----------------------------------------------------------------------

    def _make_forward(self, grid: tuple[int, int]) -> Callable:
        capture = self

        def forward(module, x, context=None, mask=None, **kwargs):
            _refuse_extras(mask, kwargs)
            if x.shape[1] != grid[0] * grid[1]:
                raise ValueError(f"attention input of length {x.shape[1]} does not match the grid {grid}")
            return capture._attend(module, x, context)

        return forward

    def _project(self, module: nn.Module, x: torch.Tensor, context: torch.Tensor | None):
        """Queries, keys and values split into heads (B·heads, n, d), and the scale."""
        source = x if context is None else context
        if self.context_transform is not None:
            context_k, context_v = self.context_transform(source, module)
        else:
            context_k = context_v = source
        heads = module.heads
        q, k, v = (_split_heads(t, heads) for t in (module.to_q(x), module.to_k(context_k), module.to_v(context_v)))
        return q, k, v, getattr(module, "scale", None) or q.shape[-1] ** -0.5

    def _attend(self, module: nn.Module, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        is_self = context is None
        heads = module.heads
        q, k, v, scale = self._project(module, x, context)
        record = self._block_pass != "replay"  # a checkpoint's recomputation only rebuilds the graph
        if is_self:
            if record:
                self._self.append((q, k, scale))
            out = _fused(q, k, v, scale, heads)
        else:
            with torch.autocast(device_type=q.device.type, enabled=False):
                probs = (torch.bmm(q.float(), k.float().transpose(1, 2)) * scale).softmax(dim=-1)
            if record:
                self._cross.append(probs)
            out = torch.bmm(probs.to(v.dtype), v)
        if record:
            self._calls += 1
            if self.stop_early and self._calls_per_pass is not None and self._calls >= self._calls_per_pass:
                # Raising inside a checkpointed region would leave its saved-tensor hooks installed.
                if self._block_pass is None:
                    raise _ForwardStopped
                self._stop_pending = True
        return module.to_out(_merge_heads(out, heads))

    # -- the maps ----------------------------------------------------------------------------------

    def cross_attention(self, batch_size: int = 1) -> torch.Tensor:
        """Cross-attention probabilities averaged uniformly over layers and heads: (B, h, w, T), fp32."""
        if not self._cross:
            raise ValueError("no cross-attention was recorded in the last pass")
        per_image = [p.reshape(batch_size, -1, *p.shape[1:]) for p in self._cross]
        mean = torch.cat(per_image, dim=1).mean(dim=1)
        return mean.reshape(batch_size, *self.grid, mean.shape[-1])

    def self_attention_rows(self, peaks: torch.Tensor, image: int | None = None, batch_size: int = 1) -> torch.Tensor:
        """Self-attention rows at flat pixel indices `peaks` (B, N), averaged over layers and heads.

        Returns (B, N, h, w), fp32: the official aggregated self-attention map indexed at the peaks. With
        `image`, only that image of a pass over `batch_size` images is read (`peaks` then has B = 1).
        """
        if not self._self:
            raise ValueError("no self-attention was recorded in the last pass")
        if peaks.dim() == 1:
            peaks = peaks[None]
        count = peaks.shape[1]
        total, heads_seen = None, 0
        for q, k, scale in self._self:
            q = q.reshape(batch_size if image is not None else peaks.shape[0], -1, *q.shape[1:])
            k = k.reshape(q.shape[0], -1, *k.shape[1:])
            if image is not None:
                q, k = q[image : image + 1], k[image : image + 1]
            index = peaks.to(q.device)[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
            with torch.autocast(device_type=q.device.type, enabled=False):
                rows = (torch.matmul(q.gather(2, index).float(), k.float().transpose(-1, -2)) * scale).softmax(dim=-1)
            layer_sum = rows.sum(dim=1)
            total = layer_sum if total is None else total + layer_sum
            heads_seen += q.shape[1]
        return (total / heads_seen).reshape(-1, count, *self.grid)


def _refuse_extras(mask, kwargs) -> None:
    extras = ("additional_tokens", "n_times_crossframe_attn_in_self")
    if mask is not None or any(kwargs.get(k) for k in extras):
        raise NotImplementedError("attention masks and extra tokens are not supported while InitNO captures attention")


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, heads: int) -> torch.Tensor:
    """Attention through `scaled_dot_product_attention`, (B·heads, n, d) in and out. The fused kernels take
    4-D inputs only; 3-D would fall back to the math path, which keeps the n×n probabilities for backward."""
    q4, k4, v4 = (t.unflatten(0, (-1, heads)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q4, k4, v4, scale=scale).flatten(0, 1)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, channels = t.shape
    return t.reshape(batch, length, heads, channels // heads).permute(0, 2, 1, 3).reshape(batch * heads, length, -1)


def _merge_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch_heads, length, channels = t.shape
    batch = batch_heads // heads
    return t.reshape(batch, heads, length, channels).permute(0, 2, 1, 3).reshape(batch, length, heads * channels)
