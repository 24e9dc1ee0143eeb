"""Each loss against a value computed by hand (docs/method.md: preprocessing and smoothing, scores; the
official implementation's `fn_compute_loss`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from initno import scores
from initno.scores import (
    Scores,
    clean_loss,
    conflict_loss,
    connected_region,
    evaluate_attention,
    kl_divergence,
    kl_gradients,
    otsu_mask,
    otsu_threshold,
    response_loss,
    smooth,
    softmax_positions,
    subject_token_maps,
)


def test_smoothing_kernel_is_the_official_one():
    # 1-D weights exp(-(x-1)^2) for x = 0, 1, 2, normalised: e^-1 / (1 + 2 e^-1) and 1 / (1 + 2 e^-1).
    edge, centre = np.exp(-1) / (1 + 2 * np.exp(-1)), 1 / (1 + 2 * np.exp(-1))
    assert (edge, centre) == pytest.approx((0.21194, 0.57612), abs=1e-5)
    expected = np.outer([edge, centre, edge], [edge, centre, edge])
    np.testing.assert_allclose(scores.SMOOTHING_KERNEL.numpy(), expected, atol=1e-7)
    assert scores.SMOOTHING_KERNEL[1, 1].item() == pytest.approx(0.3319, abs=1e-4)


def test_smoothing_uses_reflect_padding():
    constant = torch.full((1, 4, 4), 0.25)
    torch.testing.assert_close(smooth(constant), constant)
    corner = torch.zeros(1, 4, 4)
    corner[0, 0, 0] = 1.0
    # Reflect padding mirrors around the edge pixel itself, so the corner is weighted by the centre tap
    # only: 0.57612^2 (no copy of the corner lands in the padding).
    assert smooth(corner)[0, 0, 0].item() == pytest.approx(0.57612**2, abs=1e-5)
    assert smooth(corner)[0, 1, 1].item() == pytest.approx(0.21194**2, abs=1e-5)


def test_softmax_positions_drop_each_chunks_start_and_end():
    assert softmax_positions(77) == list(range(1, 76))
    assert softmax_positions(154) == list(range(1, 76)) + list(range(78, 153))
    with pytest.raises(ValueError, match="multiple of 77"):
        softmax_positions(80)


def test_subject_maps_softmax_over_prompt_tokens_times_100():
    cross = torch.zeros(2, 2, 77)
    cross[..., 0] = 5.0  # the start token: excluded from the softmax
    cross[0, 0, 2] = 0.1  # pixel (0,0) leans to token 2 by 0.1 -> weight e^10 against 74 others at e^0
    maps = subject_token_maps(cross, [[2], [5]])
    leaning = np.exp(10) / (np.exp(10) + 74)
    assert maps[0, 0, 0].item() == pytest.approx(leaning, rel=1e-5)
    assert maps[1, 0, 0].item() == pytest.approx(1 / (np.exp(10) + 74), rel=1e-5)
    assert maps[0, 1, 1].item() == pytest.approx(1 / 75, rel=1e-5)


def test_softmax_over_chosen_positions_only():
    # SD2: the softmax runs over the prompt's own tokens (here 1..5): uniform zeros give 1/5, not 1/75.
    cross = torch.zeros(2, 2, 77)
    maps = subject_token_maps(cross, [[2]], positions=[1, 2, 3, 4, 5])
    assert maps[0, 0, 0].item() == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="not prompt tokens"):
        subject_token_maps(cross, [[6]], positions=[1, 2, 3, 4, 5])


def test_a_subject_of_several_tokens_gets_their_summed_probability():
    cross = torch.zeros(2, 2, 77)
    cross[0, 0, 3], cross[0, 0, 4] = 0.01, 0.02  # ×100: logits 1 and 2 among 73 zeros at one pixel
    separate = subject_token_maps(cross, [[3], [4]])
    together = subject_token_maps(cross, [[3, 4]])
    torch.testing.assert_close(together[0], separate[0] + separate[1])
    expected = (np.exp(1) + np.exp(2)) / (np.exp(1) + np.exp(2) + 73)
    assert together[0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_subject_positions_in_a_second_chunk_and_bad_positions():
    cross = torch.zeros(2, 2, 154)
    cross[..., 77 + 5] = 0.1
    assert subject_token_maps(cross, [[82]])[0, 0, 0].item() == pytest.approx(np.exp(10) / (np.exp(10) + 149), rel=1e-5)
    for bad in (0, 76, 77, 153, 154):
        with pytest.raises(ValueError, match="not prompt tokens"):
            subject_token_maps(cross, [[bad]])


def test_response_loss_is_the_most_neglected_subject():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 2] = 0.9
    maps[1, 3, 0] = 0.55
    maps[2, 0, 0] = 1.2  # above 1: clamped to no loss
    loss, peaks = response_loss(maps)
    assert loss.item() == pytest.approx(1 - 0.55)
    assert peaks.tolist() == [1 * 4 + 2, 3 * 4 + 0, 0]


def test_response_loss_gradient_flows_through_the_peak_value_only():
    maps = torch.tensor([[[0.2, 0.7], [0.1, 0.3]]], requires_grad=True)
    loss, _ = response_loss(maps)
    (grad,) = torch.autograd.grad(loss, maps)
    assert grad.tolist() == [[[0.0, -1.0], [0.0, 0.0]]]


def test_response_loss_tie_gives_the_whole_gradient_to_the_first_subject():
    # Official: max(max(0, 1 - r) for each subject) with Python's max, which keeps the first of equal
    # values. Subjects 0 and 2 tie at 1 - 0.5 = 0.5; subject 1 (peak 0.8, loss 0.2) is not the worst.
    one = torch.tensor([[0.5, 0.1], [0.0, 0.2]])
    maps = torch.stack([one, one * 0 + torch.tensor([[0.8, 0.0], [0.0, 0.0]]), one]).requires_grad_(True)
    loss, peaks = response_loss(maps)
    assert loss.item() == 0.5
    assert peaks.tolist() == [0, 0, 0]
    (grad,) = torch.autograd.grad(loss, maps)
    expected = torch.zeros(3, 2, 2)
    expected[0, 0, 0] = -1.0  # d(1 - r_0)/d r_0, all of it to the first of the tied subjects
    assert torch.equal(grad, expected)


def test_response_loss_of_exactly_zero_passes_no_gradient():
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], requires_grad=True)  # official: max(0, 1 - 1) is the int 0
    loss, _ = response_loss(maps)
    (grad,) = torch.autograd.grad(loss, maps)
    assert loss.item() == 0.0 and not grad.any()


# A 6×6 map: a main blob of three 0.8 pixels with a weak 0.3 pixel attached, a separate 0.5 pixel, a
# 0.1 pixel, zeros elsewhere. Quantised levels (floor(255 x)): 204 ×3, 76, 127, 25, 0 ×30.
# Otsu's between-class variance per split (total mean 840/36):
#   after 0: 2722.2   after 25: 3146.2   after 76: 3256.9 (max)   after 127: 2967.3
CLEAN_MAP = torch.zeros(6, 6)
CLEAN_MAP[1, 1] = CLEAN_MAP[1, 2] = CLEAN_MAP[2, 1] = 0.8
CLEAN_MAP[2, 2] = 0.3
CLEAN_MAP[4, 4] = 0.5
CLEAN_MAP[0, 5] = 0.1


def test_otsu_threshold_by_hand():
    levels = (CLEAN_MAP.numpy() * np.float32(255)).astype(np.uint16)
    assert sorted(set(levels.ravel().tolist())) == [0, 25, 76, 127, 204]
    assert otsu_threshold(levels) == 76
    # Two levels: every split between them has the same variance, and the first one wins.
    assert otsu_threshold(np.array([10] * 5 + [200] * 3, dtype=np.uint16)) == 10


def test_otsu_mask_keeps_pixels_at_or_above_the_threshold_level():
    # Threshold 76/255 = 0.29804: the 0.3 pixel (level 76) is in, as with the official `x >= thr/255`.
    mask = otsu_mask(CLEAN_MAP)
    assert mask.sum().item() == 5
    assert mask[2, 2] and not mask[0, 5]


def test_connected_region_is_four_connected_from_the_seed():
    mask = otsu_mask(CLEAN_MAP)
    region = connected_region(mask, seed=1 * 6 + 1)
    assert sorted(map(tuple, region.nonzero().tolist())) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert not connected_region(mask, seed=0).any()


def test_clean_loss_by_hand():
    # Blob from the peak (1,1): its weakest pixel is 0.3; the strongest outside is 0.5 > 0.3 -> 0.5.
    maps = torch.stack([CLEAN_MAP, torch.full((6, 6), 0.2)])
    _, peaks = response_loss(maps)
    loss = clean_loss(maps, peaks)
    # Second map: constant, one level, threshold 0, everything is the blob, nothing outside -> 0.
    assert loss.item() == pytest.approx(0.5)


def test_clean_loss_is_zero_when_the_blob_beats_everything_outside():
    clean = CLEAN_MAP.clone()
    clean[2, 2] = 0.6  # now the blob's weakest pixel (0.6) beats the outside 0.5
    _, peaks = response_loss(clean[None])
    assert clean_loss(clean[None], peaks).item() == 0.0


def test_conflict_loss_by_hand():
    left = torch.zeros(4, 4)
    left[:, :2] = 1 / 8
    right = torch.zeros(4, 4)
    right[:, 2:] = 1 / 8
    assert conflict_loss(torch.stack([left, right])).item() == 0.0
    # Identical maps: sum(min) / sum(a + b) = 1 / (2 + 1e-6).
    assert conflict_loss(torch.stack([left, left])).item() == pytest.approx(1 / (2 + 1e-6))
    # Half overlap: min covers one column of 4 pixels at 1/8 = 0.5; sum(a+b) = 2 -> 0.25.
    middle = torch.zeros(4, 4)
    middle[:, 1:3] = 1 / 8
    assert conflict_loss(torch.stack([left, middle])).item() == pytest.approx(0.25, abs=1e-6)
    # Three subjects: mean over the pairs (left,right)=0, (left,middle)=0.25, (right,middle)=0.25.
    assert conflict_loss(torch.stack([left, right, middle])).item() == pytest.approx(1 / 6, abs=1e-6)
    assert conflict_loss(left[None]).item() == 0.0


def test_kl_divergence_by_hand():
    # KL(N(mu, e^l) || N(0,1)) per element = 0.5 (mu^2 + e^l - 1 - l).
    mu = torch.full((2, 3), 0.1)
    log_var = torch.zeros(2, 3)
    assert kl_divergence(log_var, mu).item() == pytest.approx(0.005)
    log_var = torch.full((2, 3), 0.2)
    assert kl_divergence(log_var, mu * 0).item() == pytest.approx(0.5 * (np.exp(0.2) - 1.2), rel=1e-5)


def test_kl_gradients_match_autograd():
    log_var = torch.randn(2, 3, 4, requires_grad=True)
    mu = torch.randn(2, 3, 4, requires_grad=True)
    expected = torch.autograd.grad(kl_divergence(log_var, mu), [log_var, mu])
    for got, want in zip(kl_gradients(log_var, mu), expected):
        torch.testing.assert_close(got, want)


def _peaked_cross(corners: dict[int, tuple[int, int]], strength: float) -> torch.Tensor:
    """Each token leads by `strength` on the 2×2 block at its corner (a lone pixel loses most of its
    peak to the smoothing)."""
    cross = torch.zeros(4, 4, 77)
    for token, (row, col) in corners.items():
        cross[row : row + 2, col : col + 2, token] = strength
    return cross


def _uniform_rows(peaks: torch.Tensor) -> torch.Tensor:
    return torch.full((len(peaks), 4, 4), 1 / 16)


def test_conflict_is_switched_off_while_the_response_loss_is_above_one_half():
    weak = evaluate_attention(_peaked_cross({2: (0, 0), 5: (2, 2)}, 0.0), _uniform_rows, [[2], [5]])
    assert weak.scores.cross > 0.5
    assert weak.scores.conflict == 0.0
    strong = evaluate_attention(_peaked_cross({2: (0, 0), 5: (2, 2)}, 0.2), _uniform_rows, [[2], [5]])
    assert strong.scores.cross < 0.5
    assert strong.scores.conflict == pytest.approx(1 / (2 + 1e-6), rel=1e-6)
    assert strong.scores.joint == pytest.approx(strong.scores.cross + strong.scores.conflict + strong.scores.clean)


def test_validity_and_candidate_rank():
    assert Scores(0.19, 0.29, 5.0, 0).is_valid(0.2, 0.3)
    assert not Scores(0.2, 0.1, 0, 0).is_valid(0.2, 0.3)
    assert not Scores(0.1, 0.3, 0, 0).is_valid(0.2, 0.3)
    # a calibrated cross threshold above the gate: a gated (unmeasured) conflict is not a low one
    assert not Scores(0.6, 0.0, 0, 0).is_valid(0.7, 0.4)
    assert Scores(0.5, 0.39, 0, 0).is_valid(0.7, 0.4)
    assert Scores(0.25, 0.05, 0, 0).rank == pytest.approx(0.30)
    assert Scores(0.6, 0.0, 0, 0).rank == pytest.approx(1.6)  # conflict zeroed by the gate: +1


def test_non_finite_scores_are_an_error():
    cross = _peaked_cross({2: (0, 0)}, 0.2)
    cross[0, 0, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        evaluate_attention(cross, _uniform_rows, [[2], [5]])
