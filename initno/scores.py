"""The InitNO scores, numerically as the official implementation computes them.

Reference: docs/method.md, "Preprocessing and smoothing" and "Scores". Everything here is a pure
function of attention maps; the maps come from `initno.attention`.

Shapes: a cross-attention map is (h, w, T) with T context positions (77 per prompt chunk); subject maps
are (N, h, w), one per subject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .subjects import CHUNK_LENGTH

TOKEN_SOFTMAX_SCALE = 100.0
CONFLICT_GATE = 0.5
"""While the response loss is above this, the conflict loss is switched off (docs/method.md: Scores)."""
CONFLICT_EPSILON = 1e-6


def _smoothing_kernel() -> torch.Tensor:
    # The official kernel inherits Attend-and-Excite's formula exp(-((x - mean) / (2 sigma))^2) with
    # kernel size 3 and sigma 0.5: not a textbook Gaussian, and kept so the numbers match (docs/method.md).
    size, sigma = 3, 0.5
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-((x / (2 * sigma)) ** 2))
    kernel = torch.outer(weights, weights)
    return (kernel / kernel.sum()).to(torch.float32)


SMOOTHING_KERNEL = _smoothing_kernel()


def softmax_positions(context_length: int) -> list[int]:
    """Context positions the token softmax runs over: each chunk without its first and last slot.

    For one chunk this is the official `[1:-1]` (positions 1..75). For long prompts each 77-token chunk
    starts with its own start token, which attracts attention the same way, so it is dropped too.
    """
    if context_length <= 0 or context_length % CHUNK_LENGTH:
        raise ValueError(f"context length {context_length} is not a multiple of {CHUNK_LENGTH}")
    return [p for p in range(context_length) if p % CHUNK_LENGTH not in (0, CHUNK_LENGTH - 1)]


def subject_token_maps(
    cross_attention: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Per-subject maps of the token softmax, (N, h, w).

    `cross_attention` is (h, w, T). The softmax (×100) runs over `positions` (default: `softmax_positions`);
    a subject covering several context positions gets the sum of their probabilities, i.e. the share of
    each pixel's attention that goes to the subject. For one position per subject this is exactly the
    official map.
    """
    context_length = cross_attention.shape[-1]
    positions = list(positions) if positions is not None else softmax_positions(context_length)
    column = {p: i for i, p in enumerate(positions)}
    probs = torch.softmax(cross_attention[..., positions] * TOKEN_SOFTMAX_SCALE, dim=-1)
    maps = []
    for subject in subjects:
        if not subject:
            raise ValueError("a subject has no token positions")
        missing = [p for p in subject if p not in column]
        if missing:
            raise ValueError(
                f"token position(s) {missing} are not prompt tokens of a {context_length}-position context "
                f"(positions 0 and 76 of each 77-token chunk are the start and end tokens)"
            )
        maps.append(probs[..., [column[p] for p in subject]].sum(dim=-1))
    return torch.stack(maps)


def smooth(maps: torch.Tensor) -> torch.Tensor:
    """The official 3×3 smoothing with reflect padding, applied to each (h, w) map of (N, h, w)."""
    if min(maps.shape[-2:]) < 2:
        raise ValueError(f"attention grid {tuple(maps.shape[-2:])} is too small to smooth (needs at least 2×2)")
    kernel = SMOOTHING_KERNEL.to(device=maps.device, dtype=maps.dtype)[None, None]
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel)[:, 0]


def response_loss(smoothed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention response loss max_y max(0, 1 - max S_y) and each subject's peak (docs/method.md: Scores).

    Returns the loss and the flat index of each map's peak. The peak location is chosen on detached
    values (no gradient through the choice); the gradient flows through the peak value.

    The maxima are taken as the official code takes them, with Python's `max(0, ·)` and `max(list)`:
    on an exact tie between subjects the first one wins and gets the whole gradient (a tensor `max`
    would split it evenly), and a loss of exactly 0 passes no gradient.
    """
    flat = smoothed.flatten(1)
    peaks = flat.detach().argmax(dim=1)
    peak_values = flat.gather(1, peaks[:, None])[:, 0]
    losses = 1.0 - peak_values
    worst = losses[int(losses.detach().argmax())]  # argmax returns the first of equal maxima
    if not worst.detach() > 0:
        return worst.clamp_min(0.0) * 0.0, peaks  # zero gradient, but a graph for the joint loss
    return worst, peaks


def otsu_threshold(levels: np.ndarray) -> int:
    """Otsu's threshold of integer grey levels, as OpenCV's `THRESH_OTSU` computes it.

    Maximises the between-class variance; the first level wins a tie, and levels that leave one class
    empty are skipped. Empty histogram bins above the largest level never change the result, so a
    histogram up to the largest level matches OpenCV's 16-bit variant used by the official code.
    """
    histogram = np.bincount(levels.ravel().astype(np.int64)).astype(np.float64)
    probabilities = histogram / levels.size
    total_mean = float(np.dot(np.arange(histogram.size), probabilities))
    epsilon = float(np.finfo(np.float32).eps)
    best_variance, best_level = 0.0, 0
    lower_mean, lower_weight = 0.0, 0.0
    for level, p in enumerate(probabilities):
        lower_mean *= lower_weight
        lower_weight += p
        upper_weight = 1.0 - lower_weight
        if min(lower_weight, upper_weight) < epsilon or max(lower_weight, upper_weight) > 1.0 - epsilon:
            continue
        lower_mean = (lower_mean + level * p) / lower_weight
        upper_mean = (total_mean - lower_weight * lower_mean) / upper_weight
        variance = lower_weight * upper_weight * (lower_mean - upper_mean) ** 2
        if variance > best_variance:
            best_variance, best_level = variance, level
    return best_level


def otsu_mask(smoothed_map: torch.Tensor) -> torch.Tensor:
    """Pixels at or above Otsu's threshold of the map quantised to 0..255 (as the official code does)."""
    values = smoothed_map.detach().to(torch.float32).cpu().numpy()
    levels = (values * np.float32(255)).astype(np.uint16)
    threshold = otsu_threshold(levels) / 255.0
    return smoothed_map.detach() >= torch.tensor(threshold, dtype=smoothed_map.dtype)


def connected_region(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """The 4-connected region of `mask` (h, w) that contains the flat index `seed`; empty if off-mask."""
    height, width = mask.shape
    inside = mask.cpu().numpy()
    region = np.zeros_like(inside)
    stack = [divmod(int(seed), width)]
    while stack:
        row, col = stack.pop()
        if 0 <= row < height and 0 <= col < width and inside[row, col] and not region[row, col]:
            region[row, col] = True
            stack.extend(((row, col + 1), (row, col - 1), (row + 1, col), (row - 1, col)))
    return torch.from_numpy(region).to(mask.device)


def clean_loss(smoothed: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """The official "clean" loss (docs/method.md: Scores): penalises attention outside the subject's main blob.

    Per subject: the Otsu mask, reduced to the 4-connected blob holding the peak; if the strongest
    pixel outside the blob beats the weakest pixel inside it, that outside value is added. Summed over
    subjects.
    """
    total = smoothed.new_zeros(())
    for subject_map, peak in zip(smoothed, peaks):
        blob = connected_region(otsu_mask(subject_map), int(peak))
        inside_min = torch.where(blob, subject_map, torch.ones_like(subject_map)).min()
        outside_max = torch.where(blob, torch.zeros_like(subject_map), subject_map).max()
        if outside_max > inside_min:
            total = total + outside_max
    return total


def conflict_loss(smoothed_self: torch.Tensor) -> torch.Tensor:
    """Self-attention conflict loss (docs/method.md: Scores): mean over subject pairs of sum(min) / sum(a + b).

    `smoothed_self` is (N, h, w): each subject's smoothed self-attention row at its cross-attention
    peak. Disjoint regions give 0, identical ones 0.5. Zero for fewer than two subjects.
    """
    count = smoothed_self.shape[0]
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    if not pairs:
        return smoothed_self.new_zeros(())
    overlaps = [
        torch.minimum(smoothed_self[i], smoothed_self[j]).sum()
        / ((smoothed_self[i] + smoothed_self[j]).sum() + CONFLICT_EPSILON)
        for i, j in pairs
    ]
    return torch.stack(overlaps).mean()


def kl_terms(log_var: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Element-wise KL of N(mu, exp(log_var)) to N(0, 1) (docs/method.md: Noise optimisation)."""
    return -0.5 * (1 + log_var - mu.pow(2) - log_var.exp())


def kl_divergence(log_var: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """The element mean of `kl_terms`: the official bound's quantity."""
    return kl_terms(log_var, mu).mean()


def kl_gradients(
    log_var: torch.Tensor, mu: torch.Tensor, count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of `kl_divergence` w.r.t. (log_var, mu), in closed form (no autograd call); `count`:
    the elements one mean runs over (default all; one image's for a batch of images)."""
    count = log_var.numel() if count is None else count
    return 0.5 * (log_var.detach().exp() - 1) / count, mu.detach() / count


def _require_finite(maps: torch.Tensor, what: str) -> None:
    if not torch.isfinite(maps).all():
        raise FloatingPointError(f"the {what} maps contain NaN or inf: the UNet pass overflowed or produced NaN")


@dataclass(frozen=True)
class Scores:
    """The scores of one noise. `cross` and `conflict` decide validity; `joint` is what is minimised."""

    cross: float
    conflict: float
    clean: float
    joint: float

    def is_valid(self, cross_threshold: float, conflict_threshold: float) -> bool:
        # Above the gate the conflict is switched off, not measured: such a noise is never valid. The official
        # thresholds (cross < 0.2) never get there; a calibrated cross threshold can be above 0.5.
        measured = self.cross <= CONFLICT_GATE
        return self.cross < cross_threshold and measured and self.conflict < conflict_threshold

    @property
    def rank(self) -> float:
        """The official candidate score: cross + conflict, plus 1 when the conflict term is zero (docs/method.md)."""
        penalty = 1.0 if self.conflict <= CONFLICT_EPSILON else 0.0
        return self.cross + self.conflict + penalty


@dataclass
class Evaluation:
    """Scores of one UNet pass, the joint loss with its graph, and the maps they were read from."""

    joint: torch.Tensor
    scores: Scores
    cross_maps: torch.Tensor
    self_maps: torch.Tensor
    peaks: torch.Tensor


def evaluate_attention(
    cross_attention: torch.Tensor,
    self_attention_rows: Callable[[torch.Tensor], torch.Tensor],
    subjects: Sequence[Sequence[int]],
    positions: Sequence[int] | None = None,
) -> Evaluation:
    """All scores of one pass (docs/method.md: Scores): response, clean, gated conflict, and their joint loss.

    `cross_attention` is (h, w, T), averaged over layers and heads. `self_attention_rows(peaks)` returns
    the averaged self-attention rows (N, h, w) at the given flat pixel indices; it is a callable so that
    only the rows the conflict loss reads are ever materialised.
    """
    # The scores are fp32 whatever precision the UNet ran in.
    with torch.autocast(device_type=cross_attention.device.type, enabled=False):
        cross_maps = smooth(subject_token_maps(cross_attention.float(), subjects, positions))
        _require_finite(cross_maps, "cross-attention")
        cross, peaks = response_loss(cross_maps)
        clean = clean_loss(cross_maps, peaks)
        self_maps = smooth(self_attention_rows(peaks).float())
        _require_finite(self_maps, "self-attention")
        conflict = conflict_loss(self_maps)
        if cross > CONFLICT_GATE:
            conflict = conflict * 0
        joint = cross + conflict + clean
    values = [float(v.detach()) for v in (cross, conflict, clean, joint)]
    scores = Scores(*values)
    return Evaluation(joint, scores, cross_maps.detach(), self_maps.detach(), peaks)
