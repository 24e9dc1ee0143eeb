"""Attention guidance during sampling (InitNO+ and Attend-and-Excite) on the real ldm UNet (tiny SD1 layout,
random weights, sharpened attention): the official schedule, the losses by hand, the update against an
independent reference, the refinement loop's bounds, and the k-diffusion parameterisation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import instance_forwards

from initno import guidance as guidance_module
from initno.guidance import (
    AlignmentCache,
    GuidanceSettings,
    ImageGuidance,
    Refinement,
    ScoredPass,
    alignment_loss,
    guidance_losses,
    kdiffusion_guide,
)
from initno.scores import response_loss, smooth, subject_token_maps

SUBJECTS = [[2], [5]]


def _z(seed=3) -> torch.Tensor:
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


# -- the schedule ------------------------------------------------------------------------------------------


def test_the_plan_at_50_steps_is_the_official_one():
    plan = GuidanceSettings("initno+").plan(50)
    assert plan.guided == 25 and sorted(plan.refinements) == [10, 20]
    # 20·sqrt(linspace(1, 0.5, 51)[i]) of the official PNDM schedule: 20, 18.974, 17.889, 17.436
    assert plan.step_sizes[0] == pytest.approx(20.0)
    assert plan.step_sizes[10] == pytest.approx(20 * math.sqrt(0.9))
    assert plan.step_sizes[20] == pytest.approx(20 * math.sqrt(0.8))
    assert plan.step_sizes[24] == pytest.approx(17.4356, abs=1e-4)
    assert plan.refinements[10] == Refinement(10, 0.2, 0.3)
    assert plan.max_passes == 25 + 2 * 20
    ae = GuidanceSettings("ae").plan(50)
    assert [(i, r.cross) for i, r in sorted(ae.refinements.items())] == [(0, 0.95), (10, 0.5), (20, pytest.approx(0.2))]
    assert ae.max_passes == 25 + 3 * 20 and not ae.augmented and plan.augmented


def test_the_plan_scales_to_the_users_steps():
    plan = GuidanceSettings("initno+").plan(20)
    assert plan.guided == 10 and sorted(plan.refinements) == [4, 8]
    assert plan.step_sizes[4] == pytest.approx(20 * math.sqrt(1 - 0.5 * 4 / 20))
    seven = GuidanceSettings("ae").plan(7)  # 3.5 guided steps round to 4; 10 and 20 of 50 to 1 and 3
    assert seven.guided == 4 and sorted(seven.refinements) == [0, 1, 3]
    late = GuidanceSettings("ae", guided_fraction=0.3).plan(50)  # refinement at 20 lies past the guided steps
    assert sorted(late.refinements) == [0, 10]


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown guidance method 'aae'"):
        GuidanceSettings("aae")


# -- the losses by hand ------------------------------------------------------------------------------------


def test_alignment_cache_blends_a_tenth_of_each_new_map():
    cache = AlignmentCache()
    first, second = torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 1.5)
    assert torch.equal(cache.update(first), first)
    assert torch.allclose(cache.update(second), torch.full((1, 2, 2), 0.9 * 0.5 + 0.1 * 1.5))


def test_alignment_loss_is_the_summed_mean_absolute_difference():
    # Constant maps stay constant under the reflect-padded smoothing: |0.3 − 0.1| + |0.2 − 0.7| = 0.7.
    maps = torch.stack([torch.full((3, 3), 0.3), torch.full((3, 3), 0.2)])
    cached = torch.stack([torch.full((3, 3), 0.1), torch.full((3, 3), 0.7)])
    assert alignment_loss(maps, cached).item() == pytest.approx(0.7)
    peaked = torch.zeros(1, 3, 3)
    peaked[0, 1, 1] = 1.0
    assert alignment_loss(peaked, peaked).item() == 0.0


def test_the_augmented_loss_weights_its_terms_and_does_not_gate_the_conflict():
    # Two subjects whose smoothed peaks are 0.25 (cross 0.75 > 0.5, where InitNO's own loss gates the
    # conflict to 0) and whose self-attention rows are identical (conflict 0.5).
    maps = torch.full((2, 4, 4), 0.25)
    smoothed = smooth(maps)
    cross, peaks = response_loss(smoothed)
    self_maps = torch.full((2, 4, 4), 1 / 16)
    scored = ScoredPass(maps, smoothed, cross, peaks, self_maps)
    cache = AlignmentCache()
    cache.update(torch.zeros(2, 4, 4))  # the previous call's maps: alignment 0.25 + 0.25 after the blend
    losses = guidance_losses(scored, cache)
    assert losses.cross.item() == pytest.approx(0.75)
    assert losses.conflict.item() == pytest.approx(0.5)
    assert losses.clean.item() == 0.0  # flat maps: the whole map is the peak's blob
    assert losses.alignment.item() == pytest.approx(2 * 0.25 * 0.9)
    assert losses.augmented.item() == pytest.approx(0.75 + 0.5 + 0.1 * 0.0 + 0.1 * 0.45)
    ae = guidance_losses(scored, None)  # Attend-and-Excite: the response loss alone
    assert ae.augmented.item() == pytest.approx(0.75) and ae.conflict.item() == 0.0


# -- the update against an independent reference ------------------------------------------------------------


def _reference_loss(unet, apply, z, timestep, cond):
    """The official way: explicit attention in every layer, the whole UNet, the 1/4-grid maps averaged; the
    response loss alone, which both methods step on outside the refinement."""
    cross = []
    grid = z.shape[-1] // 4

    def explicit(module, x, context=None, mask=None):
        source = x if context is None else context
        projections = (module.to_q(x), module.to_k(source), module.to_v(source))
        q, k, v = (t.unflatten(-1, (module.heads, -1)).transpose(1, 2) for t in projections)
        probs = (q @ k.transpose(-1, -2) * module.scale).softmax(-1)
        if x.shape[1] == grid * grid and context is not None:
            cross.append(probs.flatten(0, 1))
        return module.to_out((probs @ v).transpose(1, 2).flatten(2))

    modules = [m for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))]
    for module in modules:
        module.forward = explicit.__get__(module)
    try:
        apply(z, torch.full((1,), float(timestep)), cond)
    finally:
        for module in modules:
            del module.forward
    cross_maps = torch.cat(cross).mean(0).reshape(grid, grid, -1)
    maps = subject_token_maps(cross_maps, SUBJECTS)
    loss, _peaks = response_loss(smooth(maps))
    return loss


@pytest.mark.parametrize("method", ["ae", "initno+"])
def test_a_guided_step_moves_the_latent_as_the_reference_does(denoiser, tiny_unet, apply, cat_and_dog, method):
    plan = GuidanceSettings(method).plan(50)
    z, timestep, step = _z(), 801.0, 5  # a guided step without refinement
    with torch.enable_grad():
        reference_z = z.clone().requires_grad_(True)
        loss = _reference_loss(tiny_unet, apply, reference_z, timestep, cat_and_dog)
        (gradient,) = torch.autograd.grad(loss, reference_z)
    expected = z - plan.step_sizes[step] * gradient
    forwards = instance_forwards(tiny_unet)
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, plan)
    moved = guide.guide(step, z, timestep)
    assert not torch.equal(moved, z)
    # The step is up to 1.5 here; the guide's fused attention kernels and the reference's explicit softmax
    # round differently, and the step size (about 20) amplifies that to 1.8e-5 on some CPUs.
    assert torch.allclose(moved, expected, atol=5e-5, rtol=1e-4)
    assert instance_forwards(tiny_unet) == forwards
    assert all(p.grad is None and p.requires_grad for p in tiny_unet.parameters())
    assert guide.trace.passes == 1 and guide.trace.steps[0].refinement_updates == 0


def test_kdiffusion_latent_moves_as_the_reference_unit_variance_latent(denoiser, cat_and_dog):
    """k-diffusion holds x = z·sqrt(1 + σ²): the guided x, scaled back, is the reference's guided z."""
    plan = GuidanceSettings("ae").plan(50)
    z, sigma, timestep = _z(5), 7.3, 901.0
    reference = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, plan).guide(3, z, timestep)
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, plan).guide
    x = z * math.sqrt(1 + sigma**2)
    moved = kdiffusion_guide(guide, 3, x, sigma, timestep)
    # x / sqrt(1 + σ²) rounds in float32, and the UNet's backward carries that on (2.7e-5 seen): a
    # tolerance far below the move itself
    assert (reference - z).abs().max() > 0.1
    assert torch.allclose(moved / math.sqrt(1 + sigma**2), reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(moved, x)


# -- the loop's bounds -------------------------------------------------------------------------------------


def test_refinement_stops_at_its_bound(denoiser, cat_and_dog, monkeypatch):
    updates = []
    monkeypatch.setattr(AlignmentCache, "update", _counting(AlignmentCache.update, updates))
    never = GuidanceSettings("initno+", refinements=(Refinement(0, cross=0.0, conflict=0.0),), max_refinement=3)
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, never.plan(10))
    guide.guide(0, _z(), 981.0)
    (record,) = guide.trace.steps
    # the pass at z0, passes at z1 and z2 (the update after each), the final pass at z3
    assert (record.refinement_updates, record.passes) == (3, 4)
    # the official code's five loss calls: the step's pass, its repeat at z0 (no pass here), z1, z2, z3
    assert len(updates) == 5
    assert guide.plan.max_passes == guide.plan.guided + 3


def test_refinement_is_skipped_when_the_target_is_met(denoiser, cat_and_dog):
    always = GuidanceSettings("ae", refinements=(Refinement(0, cross=1.0),))
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, always.plan(10))
    guide.guide(0, _z(), 981.0)
    assert (guide.trace.steps[0].refinement_updates, guide.trace.passes) == (0, 1)


def test_steps_past_the_guided_fraction_are_left_alone(denoiser, cat_and_dog, monkeypatch):
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, GuidanceSettings("initno+").plan(10))
    monkeypatch.setattr(guide, "_guide", lambda *_: pytest.fail("no pass past the guided steps"))
    z = _z()
    assert guide.guide(5, z, 481.0) is z and guide.guide(9, z, 1.0) is z


def test_a_cancelled_guidance_leaves_the_latent_and_stops(denoiser, cat_and_dog):
    guide = ImageGuidance(denoiser, cat_and_dog, SUBJECTS, GuidanceSettings("ae").plan(10), cancel=lambda: True)
    z = _z()
    assert torch.equal(guide.guide(1, z, 901.0), z)
    assert guide.trace.cancelled and guide.trace.passes == 0


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def test_the_module_documents_each_method():
    assert "InitNO+" in guidance_module.__doc__ and "Attend-and-Excite" in guidance_module.__doc__
