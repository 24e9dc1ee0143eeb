"""Attention capture on the real ldm UNet (tiny SD1 layout, random weights)."""

from __future__ import annotations

import types

import pytest
import torch
from helpers import CAPTURED_AT_16, instance_forwards

from initno.attention import AttentionCapture, capture_grid
from initno.optimize import frozen_parameters
from initno.tiny import TINY_SD2_UNET, TINY_SDXL_UNET, apply_unet, build_unet

T = torch.full((1,), 981.0)


def _run(unet, latent, cond):
    return unet(latent, timesteps=T, context=cond)


def _patched_names(unet) -> set[str]:
    return {name for name, m in unet.named_modules() if "forward" in m.__dict__}


def test_capture_grid_rounds_up_like_the_unet():
    assert capture_grid((64, 64), 4) == (16, 16)
    assert capture_grid((96, 128), 4) == (24, 32)
    assert capture_grid((65, 75), 4) == (17, 19)
    assert capture_grid((64, 64), 1) == (64, 64)


def test_only_the_layers_at_the_capture_grid_are_replaced(tiny_unet, cat_and_dog):
    latent = torch.randn(1, 4, 16, 16)
    with AttentionCapture(tiny_unet) as capture:
        capture.run(_run, tiny_unet, latent, cat_and_dog)
        assert _patched_names(tiny_unet) == CAPTURED_AT_16
        assert capture.grid == (4, 4)
        assert capture.grids_seen == {(16, 16), (8, 8), (4, 4), (2, 2)}
    assert _patched_names(tiny_unet) == set()


def test_outputs_match_the_unmodified_unet(tiny_unet, cat_and_dog):
    latent = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        expected = _run(tiny_unet, latent, cat_and_dog)
        with AttentionCapture(tiny_unet, stop_early=False) as capture:
            got = capture.run(_run, tiny_unet, latent, cat_and_dog)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_maps_are_probabilities_on_the_real_grid(tiny_unet, cat_and_dog):
    latent = torch.randn(1, 4, 16, 24)  # non-square: the grid is read from the feature map
    with AttentionCapture(tiny_unet) as capture, torch.no_grad():
        capture.run(_run, tiny_unet, latent, cat_and_dog)
        cross = capture.cross_attention()
        rows = capture.self_attention_rows(torch.tensor([[0, 23]]))
    assert cross.shape == (1, 4, 6, 77)
    assert cross.dtype == torch.float32
    torch.testing.assert_close(cross.sum(-1), torch.ones(1, 4, 6))
    assert rows.shape == (1, 2, 4, 6)
    torch.testing.assert_close(rows.sum((-1, -2)), torch.ones(1, 2))


def test_self_attention_rows_equal_rows_of_the_full_averaged_map(tiny_unet, cat_and_dog):
    """The official code averages full (256×256) self-attention maps and indexes them at the peak; the
    capture computes only those rows. Same numbers."""
    full_maps = []

    def record_full(module, args, kwargs, output):
        x = args[0]
        q = module.to_q(x).reshape(1, x.shape[1], module.heads, -1).transpose(1, 2)
        k = module.to_k(x).reshape(1, x.shape[1], module.heads, -1).transpose(1, 2)
        full_maps.append(((q @ k.transpose(-1, -2)) * module.scale).softmax(-1)[0])

    latent = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        handles = [
            m.register_forward_hook(record_full, with_kwargs=True)
            for name, m in tiny_unet.named_modules()
            if name in CAPTURED_AT_16 and name.endswith("attn1")
        ]
        _run(tiny_unet, latent, cat_and_dog)
        for handle in handles:
            handle.remove()
        averaged = torch.cat(full_maps).mean(0)  # (16, 16): 5 layers × 2 heads
        with AttentionCapture(tiny_unet) as capture:
            capture.run(_run, tiny_unet, latent, cat_and_dog)
            rows = capture.self_attention_rows(torch.tensor([3, 9]))
    torch.testing.assert_close(rows[0].reshape(2, 16), averaged[[3, 9]], rtol=1e-4, atol=1e-6)


def test_stops_after_the_last_captured_layer(tiny_unet, cat_and_dog):
    calls = []
    hook = tiny_unet.out.register_forward_hook(lambda *_: calls.append(1))
    try:
        with AttentionCapture(tiny_unet) as capture:
            first = capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), cat_and_dog)
            second = capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), cat_and_dog)
            assert capture.cross_attention().shape == (1, 4, 4, 77)
    finally:
        hook.remove()
    assert first is not None and second is None
    assert len(calls) == 1  # the output layers ran on the first (learning) pass only


def _maps_loss(capture: AttentionCapture) -> torch.Tensor:
    return capture.cross_attention()[..., 2].max() + capture.self_attention_rows(torch.tensor([5])).max()


def test_gradients_flow_from_the_maps_to_the_latent(tiny_unet, cat_and_dog):
    """The latent's gradient is the captured maps' own: finite, and a small step along it changes the maps'
    loss by what the gradient predicts (a central finite difference)."""
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with AttentionCapture(tiny_unet) as capture, torch.enable_grad():
        capture.run(_run, tiny_unet, latent, cat_and_dog)
        (grad,) = torch.autograd.grad(_maps_loss(capture), latent)
    assert torch.isfinite(grad).all() and grad.norm() > 0
    direction, h = grad / grad.norm(), 1e-2
    moved = []
    for step in (h, -h):
        with AttentionCapture(tiny_unet) as capture, torch.no_grad():
            capture.run(_run, tiny_unet, latent.detach() + step * direction, cat_and_dog)
            moved.append(_maps_loss(capture).item())
    assert (moved[0] - moved[1]) / (2 * h) == pytest.approx(grad.norm().item(), rel=0.02)


def test_forwards_restored_exactly_even_a_foreign_instance_forward(tiny_unet, cat_and_dog):
    """Hypertile, for one, leaves its own instance `forward` on attn1 modules."""
    attn1 = tiny_unet.input_blocks[7][1].transformer_blocks[0].attn1
    foreign = types.MethodType(type(attn1).forward, attn1)
    attn1.forward = foreign
    try:
        before = instance_forwards(tiny_unet)
        with AttentionCapture(tiny_unet) as capture:
            capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), cat_and_dog)
            assert attn1.forward is not foreign
        assert instance_forwards(tiny_unet) == before
        assert attn1.forward is foreign
    finally:
        del attn1.forward


def test_forwards_restored_after_an_exception_inside_the_block(tiny_unet, cat_and_dog):
    before = instance_forwards(tiny_unet)
    hooks_before = len(tiny_unet._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"), AttentionCapture(tiny_unet) as capture:
        capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), cat_and_dog)
        raise RuntimeError("boom")
    assert instance_forwards(tiny_unet) == before
    assert len(tiny_unet._forward_pre_hooks) == hooks_before
    assert all(not m._forward_pre_hooks for m in tiny_unet.modules() if m is not tiny_unet)


def test_forwards_restored_after_an_exception_inside_the_unet(tiny_unet, cat_and_dog):
    before = instance_forwards(tiny_unet)
    with pytest.raises(RuntimeError, match="cannot be multiplied"), AttentionCapture(tiny_unet) as capture:
        capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), torch.randn(1, 77, 5))  # wrong width
    assert instance_forwards(tiny_unet) == before


def test_context_transform_is_applied_in_captured_layers(tiny_unet, cat_and_dog):
    seen = []

    def hypernetwork(context, module):
        seen.append(module)
        return context, context * 0  # values from a zeroed context: attention outputs vanish

    latent = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        with AttentionCapture(tiny_unet, stop_early=False) as capture:
            plain = capture.run(_run, tiny_unet, latent, cat_and_dog)
        with AttentionCapture(tiny_unet, context_transform=hypernetwork, stop_early=False) as capture:
            transformed = capture.run(_run, tiny_unet, latent, cat_and_dog)
    assert len(seen) == 10
    assert not torch.allclose(plain, transformed)


class KeywordContextAttention(torch.nn.Module):
    """The sgm `CrossAttention` call shape: extra keyword arguments, context passed as a keyword."""

    def __init__(self, dim, context_dim=None, heads=2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = torch.nn.Sequential(torch.nn.Linear(dim, dim))

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        raise AssertionError("replaced while capturing")


class KeywordTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1 = KeywordContextAttention(8)
        self.attn2 = KeywordContextAttention(8, context_dim=6)
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Identity()])

    def forward(self, x, context=None):
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.attn1(tokens, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0)
        return self.attn2(tokens, context=context, additional_tokens=None)


class KeywordUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(8, 8, 4, stride=4)
        self.block = KeywordTransformer()

    def forward(self, x, context):
        return self.block(self.down(x), context=context)


def test_sgm_style_keyword_arguments():
    unet = KeywordUNet()
    with AttentionCapture(unet) as capture, torch.no_grad():
        capture.run(unet, torch.randn(1, 8, 8, 8), torch.randn(1, 77, 6))
        assert capture.cross_attention().shape == (1, 2, 2, 77)
    assert _patched_names(unet) == set()


def test_the_hosts_attention_optimisation_keeps_running_outside_the_captured_layers(tiny_unet, cat_and_dog):
    """A1111 installs its cross-attention optimisation (sdp, xformers, Doggettx, ...) on the class."""
    attention_class = type(tiny_unet.input_blocks[7][1].transformer_blocks[0].attn1)
    original = attention_class.forward
    calls = []

    def optimised(self, x, context=None, mask=None, **kwargs):
        calls.append(self)
        return original(self, x, context=context, mask=mask)

    attention_class.forward = optimised
    try:
        with AttentionCapture(tiny_unet, stop_early=False) as capture, torch.no_grad():
            capture.run(_run, tiny_unet, torch.randn(1, 4, 16, 16), cat_and_dog)
    finally:
        attention_class.forward = original
    names = {module: name for name, module in tiny_unet.named_modules()}
    called = {names[module] for module in calls}
    every = {name for name, module in tiny_unet.named_modules() if isinstance(module, attention_class)}
    assert called == every - CAPTURED_AT_16


@pytest.mark.parametrize(("latent", "grid"), [((96, 96), (24, 24)), ((40, 24), (10, 6))])
def test_sd2_layout_reads_the_grid_at_a_quarter_of_the_latent(latent, grid):
    """SD2 at 768×768 (latent 96): the 24×24 layers; and a non-square size."""
    unet = build_unet(TINY_SD2_UNET, seed=0)
    with AttentionCapture(unet) as capture, torch.no_grad():
        capture.run(_run, unet, torch.randn(1, 4, *latent), torch.randn(1, 77, 32))
        assert capture.cross_attention().shape == (1, *grid, 77)
        assert capture.self_attention_rows(torch.tensor([0])).shape == (1, 1, *grid)
        assert _patched_names(unet) == CAPTURED_AT_16


@pytest.fixture(scope="module")
def sdxl_unet():
    return build_unet(TINY_SDXL_UNET, seed=0)


def _sdxl_cond(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "crossattn": torch.randn(1, 77, 2048, generator=generator),
        "vector": torch.randn(1, 2816, generator=generator),
    }


SDXL_DEEPEST = {
    "input_blocks.7.1",
    "input_blocks.8.1",
    "middle_block.1",
    "output_blocks.0.1",
    "output_blocks.1.1",
    "output_blocks.2.1",
}


def test_sdxl_layout_is_the_ldm_unet_with_sgm_depths_and_vector(sdxl_unet):
    containers = {
        name: len(m.transformer_blocks) for name, m in sdxl_unet.named_modules() if hasattr(m, "transformer_blocks")
    }
    assert containers == {
        **dict.fromkeys(
            ["input_blocks.4.1", "input_blocks.5.1", "output_blocks.3.1", "output_blocks.4.1", "output_blocks.5.1"], 2
        ),
        **dict.fromkeys(SDXL_DEEPEST, 3),
    }  # no attention at the first level, deeper stacks at the last (TINY_SDXL_UNET: [0, 2, 3])
    assert sdxl_unet.label_emb[0].in_features == 2816
    assert {m.to_k.in_features for name, m in sdxl_unet.named_modules() if name.endswith("attn2")} == {2048}


@pytest.mark.parametrize(("latent", "grid"), [((16, 16), (4, 4)), ((16, 24), (4, 6))])
def test_sdxl_layout_reads_its_deepest_level_at_a_quarter_of_the_latent(sdxl_unet, latent, grid):
    """SDXL at 1024² (latent 128): the 32×32 level, input_blocks.7/8, the middle and output_blocks.0-2,
    all their transformer blocks; and a non-square size."""
    apply = apply_unet(sdxl_unet)
    with AttentionCapture(sdxl_unet) as capture, torch.no_grad():
        capture.run(apply, torch.randn(1, 4, *latent), T, _sdxl_cond())
        assert capture.cross_attention().shape == (1, *grid, 77)
        patched = _patched_names(sdxl_unet)
    assert {name.rsplit(".transformer_blocks", 1)[0] for name in patched} == SDXL_DEEPEST
    assert len(patched) == 2 * 3 * len(SDXL_DEEPEST)  # attn1 and attn2 of every block


def test_the_vector_reaches_the_unet(sdxl_unet):
    apply = apply_unet(sdxl_unet)
    latent, cond = torch.randn(1, 4, 16, 16), _sdxl_cond()
    with torch.no_grad():
        same = apply(latent, T, cond)
        other = apply(latent, T, {**cond, "vector": cond["vector"] + 1})
    assert (same - other).abs().max() > 1e-3


def _saved_bytes_and_grad(unet, apply, latent, cond, checkpoint_blocks):
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    latent = latent.clone().requires_grad_(True)
    with frozen_parameters(unet), AttentionCapture(unet, checkpoint_blocks=checkpoint_blocks) as capture:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            capture.run(apply, latent, T, cond)
            loss = capture.cross_attention()[..., 2].max() + capture.self_attention_rows(torch.tensor([5])).max()
        (grad,) = torch.autograd.grad(loss, latent)
        calls_per_pass = capture._calls_per_pass
    return sum(saved), grad, calls_per_pass


def test_checkpointed_blocks_give_the_same_gradient_for_less_saved_memory(sdxl_unet):
    apply = apply_unet(sdxl_unet)
    latent, cond = torch.randn(1, 4, 16, 16), _sdxl_cond()
    kept, expected, calls = _saved_bytes_and_grad(sdxl_unet, apply, latent, cond, checkpoint_blocks=False)
    recomputed, got, calls_checkpointed = _saved_bytes_and_grad(sdxl_unet, apply, latent, cond, checkpoint_blocks=True)
    # Up to rounding: outside the capture grid the checkpointed pass runs the fused kernel, not ldm's own.
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)
    assert calls_checkpointed == calls == 36  # the replay in the backward pass records nothing
    assert recomputed < 0.75 * kept  # what remains: the ResBlocks and the transformers' projections
    assert _patched_names(sdxl_unet) == set()


def test_checkpointed_blocks_still_stop_after_the_last_captured_layer(sdxl_unet):
    apply = apply_unet(sdxl_unet)
    ran_output = []
    hook = sdxl_unet.out.register_forward_hook(lambda *_: ran_output.append(1))
    try:
        with frozen_parameters(sdxl_unet), AttentionCapture(sdxl_unet, checkpoint_blocks=True) as capture:
            for _ in range(3):
                latent = torch.randn(1, 4, 16, 16, requires_grad=True)
                with torch.enable_grad():
                    capture.run(apply, latent, T, _sdxl_cond())
                    loss = capture.cross_attention()[..., 5].max()
                torch.autograd.grad(loss, latent)
                assert len(capture._cross) == 18
    finally:
        hook.remove()
    assert len(ran_output) == 1
    assert _patched_names(sdxl_unet) == set()


def test_self_attention_never_keeps_its_full_probabilities_for_the_backward_pass(tiny_unet, cat_and_dog):
    """The captured self-attention runs through a fused kernel (4-D inputs): no n×n matrix is saved."""
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    latent = torch.randn(1, 4, 24, 24, requires_grad=True)  # the 6×6 grid: n = 36 tokens
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with frozen_parameters(tiny_unet), AttentionCapture(tiny_unet) as capture, torch.enable_grad(), saving:
        capture.run(_run, tiny_unet, latent, cat_and_dog)
        capture.cross_attention()[..., 2].max().backward()
    assert capture.grid == (6, 6)
    assert not [shape for shape in shapes if shape[-2:] == (36, 36)]


def test_checkpointed_recomputation_does_not_depend_on_the_hosts_attention(sdxl_unet, monkeypatch):
    """A1111's default attention (Doggettx) slices by the free memory, which differs in the backward pass;
    with checkpointed blocks every layer runs the fused kernel, so the recomputation repeats the forward."""
    from ldm.modules.attention import CrossAttention

    free_memory = {"slices": 1}

    def sliced_forward(self, x, context=None, mask=None, **kwargs):
        context = x if context is None else context
        q, k, v = (
            t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        chunks = [
            (part @ k.transpose(-1, -2) * self.scale).softmax(-1) @ v for part in q.chunk(free_memory["slices"], dim=2)
        ]
        return self.to_out(torch.cat(chunks, dim=2).transpose(1, 2).flatten(2))

    monkeypatch.setattr(CrossAttention, "forward", sliced_forward)
    apply = apply_unet(sdxl_unet)
    latent = torch.randn(1, 4, 16, 16, requires_grad=True)
    with frozen_parameters(sdxl_unet), AttentionCapture(sdxl_unet, checkpoint_blocks=True) as capture:
        with torch.enable_grad():
            capture.run(apply, latent, T, _sdxl_cond())
            loss = capture.cross_attention()[..., 2].max()
        free_memory["slices"] = 2
        (grad,) = torch.autograd.grad(loss, latent)
    assert grad.abs().sum() > 0


def test_the_recomputation_runs_in_the_hosts_context(tiny_unet, cat_and_dog):
    """A1111's manual_cast (fp8 storage, MPS, GTX 16xx) patches the layer classes only inside apply_model;
    the recomputation in the backward pass happens later and gets that context from `recompute_context`."""
    import contextlib

    stored, computed = torch.bfloat16, torch.float32
    linears = [
        m for name, m in tiny_unet.named_modules() if isinstance(m, torch.nn.Linear) and "transformer_blocks" in name
    ]

    @contextlib.contextmanager
    def manual_cast():
        original = torch.nn.Linear.forward

        def cast(self, x):
            return torch.nn.functional.linear(
                x.to(computed), self.weight.to(computed), None if self.bias is None else self.bias.to(computed)
            )

        torch.nn.Linear.forward = cast
        try:
            yield
        finally:
            torch.nn.Linear.forward = original

    def apply(latent, t, cond):
        with manual_cast():
            return _run(tiny_unet, latent, cond)

    saved = [{key: value.clone() for key, value in linear.state_dict().items()} for linear in linears]
    for linear in linears:
        linear.to(stored)
    try:
        grads = []
        for context in (None, manual_cast):
            latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
            capture = AttentionCapture(tiny_unet, checkpoint_blocks=True, recompute_context=context)
            with frozen_parameters(tiny_unet), capture, torch.enable_grad():
                capture.run(apply, latent, T, cat_and_dog)
                loss = capture.cross_attention()[..., 2].max()
                if context is None:
                    with pytest.raises(RuntimeError, match="dtype"):
                        torch.autograd.grad(loss, latent)
                else:
                    grads.append(torch.autograd.grad(loss, latent)[0])
    finally:
        for linear, state in zip(linears, saved):  # exactly: the session's UNet is shared with later tests
            linear.to(torch.float32)
            linear.load_state_dict(state)
    assert grads[0].abs().sum() > 0
