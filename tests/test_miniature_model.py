"""The trained miniature: the shipped weights, a model that draws, and InitNO bringing back a subject the
plain image misses, all through the real ldm UNet and InitNO's attention capture."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from helpers import run_cli

from initno.miniature import DEMO_PROMPT, DEMO_SEED, WEIGHTS_SHA256
from initno.miniature.detect import detect
from initno.miniature.evaluate import Miniworld, initial_noise
from initno.miniature.model import DESIGNS, Miniature
from initno.miniature.train import sha256
from initno.optimize import ImageRequest
from initno.params import InitNOParams
from initno.selection import LookaheadParams, SelectionParams, select_by_lookahead


@functools.cache
def miniworld_of(name: str) -> Miniworld:
    return Miniworld(Miniature.load(name))


@pytest.mark.parametrize("name", DESIGNS)
def test_the_shipped_weights_are_the_recorded_ones(name):
    weights = DESIGNS[name].weights
    assert weights.stat().st_size <= (15 if name == "miniature" else 25) * 2**20
    assert sha256(weights) == WEIGHTS_SHA256[name]


# The eps prediction on a fixed input (seed 0, t = 501, the demo prompt), recorded when the weights were
# committed: the first six values and the std. The second miniature's UNet reads its 3×64×64 pixels unfolded.
RECORDED_PREDICTIONS = {
    "miniature": ([-1.21987, -1.27171, -0.28056, -0.41473, 0.90519, 0.64074], 1.00690),
    "miniature-16": ([-1.01135, -1.13413, -0.24523, -0.43165, 0.8325, 0.69571], 0.99903),
}


@pytest.mark.parametrize("name", RECORDED_PREDICTIONS)
def test_the_shipped_weights_reproduce_their_recorded_prediction(name):
    world = miniworld_of(name)
    unet = DESIGNS[name].unet
    shape = (1, unet["in_channels"], unet["image_size"], unet["image_size"])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = world.model.apply(x, torch.tensor([501.0]), world.model.encode([DEMO_PROMPT]))
    first, std = RECORDED_PREDICTIONS[name]
    assert eps.flatten()[:6].tolist() == pytest.approx(first, abs=1e-4)
    assert float(eps.std()) == pytest.approx(std, abs=1e-4)


# Recorded behaviour on two seeds. Over all 20 subjects × 8 seeds the first draws 91 % (weights/TRAINING.md),
# the second 82.5 %, short of the 97 % asked for: yellow least (weights/TRAINING-miniature-16.md).
SINGLE_SUBJECTS = [
    *(("miniature", p) for p in ["a red circle", "a yellow square", "a green triangle", "a blue cross"]),
    *(("miniature-16", p) for p in ["a red cross", "a green circle", "a blue square", "a purple triangle"]),
]


@pytest.mark.parametrize(("name", "prompt"), SINGLE_SUBJECTS)
def test_it_draws_a_single_subject(name, prompt):
    world = miniworld_of(name)
    subjects, _ = world.subjects_of(prompt)
    noise = torch.stack([initial_noise(seed, world.latent_shape) for seed in (0, 2)])
    for image in world.sample(noise, world.model.encode([prompt])):
        assert detect(image, subjects).all_present


def test_the_demo_case_fast_and_initno_bring_back_what_plain_sampling_misses():
    """The demo's case: the plain image shows neither subject; Fast picks a restart whose attention 2 steps
    ahead has both peaks, and InitNO lifts the neglected subject's peak (its response loss from above the
    threshold to below it); the images from both noises show both subjects (the detector's verdicts, as
    `python -m initno demo` prints them). The self-attention threshold is not met on this model (see
    docs/evaluation.md), so InitNO runs all rounds and the fallback."""
    miniworld = miniworld_of("miniature")
    subjects, positions = miniworld.subjects_of(DEMO_PROMPT)
    cond = miniworld.model.encode([DEMO_PROMPT])
    noise = initial_noise(DEMO_SEED, miniworld.latent_shape)
    request = ImageRequest(noise, DEMO_SEED, cond, positions)
    (fast,) = select_by_lookahead(miniworld.denoiser, miniworld.advance, [request], LookaheadParams())
    assert fast.chosen == 1 and fast.passes == 20
    params = InitNOParams()
    (result,) = miniworld.optimise([noise], [DEMO_SEED], cond, positions, params)
    assert result.initial.cross > params.cross_threshold > result.final.cross
    assert not result.valid and result.steps == 91
    latents = torch.stack([noise, fast.latent.reshape(noise.shape), result.latent.reshape(noise.shape)])
    plain, chosen, optimised = miniworld.sample(latents, cond)
    assert not any(detect(plain, subjects).present)
    assert detect(chosen, subjects).all_present
    assert detect(optimised, subjects).all_present


def _eval_json(*options: str) -> dict:
    """`python -m initno eval OPTIONS --json`, run as a user runs it; its report."""
    completed = run_cli("eval", *options, "--json")
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_the_benchmark_reports_every_method_with_intervals_and_paired_tests(tmp_path):
    """`python -m initno eval` on one prompt and two seeds: a row per method, each with its Wilson interval
    and its paired comparison with plain and best-of-n; best-of-n at select's passes."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{DEMO_PROMPT}\n")
    grid = tmp_path / "grid.png"
    options = ["--prompts", str(prompts), "--seeds", f"{DEMO_SEED},1", "--methods", "plain,best-of-n,select"]
    report = _eval_json(*options, "--grid", str(grid))
    rows = report["rows"]
    select = rows[2]
    assert [row["method"] for row in rows] == ["plain", f"best-of-{report['best_of']}", "select"]
    assert report["best_of"] == round(select["passes"])
    assert 8 <= select["passes"] <= SelectionParams().max_passes
    assert rows[0]["passes"] == 0 and rows[1]["passes"] == report["best_of"]
    assert rows[0]["vs_plain"] is None
    assert set(rows[2]["vs_plain"]) == {"difference", "interval", "wins", "losses", "p", "pairs"}
    assert rows[2]["vs_plain"]["pairs"] == 2 and report["model"] == "miniature"
    for row in rows:
        low, high = row["interval"]
        assert low <= row["all_present"] <= high
    assert report["thresholds"]["source"].startswith("calibrated")
    plain = [image for image in report["images"] if image["method"] == "plain"]
    assert next(image["present"] for image in plain) != [True, True]  # the demo's seed: plain misses a subject
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_benchmark_runs_with_changed_parameters_and_says_so(tmp_path):
    """`eval --set NAME=VALUE`: the run uses them (the pass count follows) and the report lists them. A
    guided method is compared with its noise alone: with nothing guided, select then guidance is select."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{DEMO_PROMPT}\n")
    changes = ["max_rounds=1", "steps_per_round=2", "fallback_steps=0", "candidates=3", "polish_steps=0",
               "guidance_guided_fraction=0"]  # fmt: skip
    methods = "initno,select,ae,select+"
    options = ["--prompts", str(prompts), "--seeds", str(DEMO_SEED), "--methods", methods, "--grid", ""]
    report = _eval_json(*options, *(f"--set={c}" for c in changes))
    assert report["changed_params"] == {
        "max_rounds": 1, "steps_per_round": 2, "fallback_steps": 0, "candidates": 3, "polish_steps": 0,
        "guidance_guided_fraction": 0.0,
    }  # fmt: skip
    rows = report["rows"]
    assert [row["passes"] for row in rows] == [2, 3, 0, 3]  # no step guided, no guidance pass
    assert [row["vs_noise"] is None for row in rows] == [True, True, True, False]  # ae's noise, plain's, not run
    assert (rows[3]["vs_noise"]["wins"], rows[3]["vs_noise"]["losses"], rows[3]["vs_noise"]["difference"]) == (0, 0, 0)


def test_the_benchmarks_initno_stops_at_the_calibrated_thresholds_as_in_the_webui(tmp_path):
    """`eval`'s initno uses the thresholds calibrated to the model, as the WebUI's default does; with
    `thresholds=official` SD1.4's, never reached on the miniature. At the 0.99 quantile seed 2's noise is
    valid as it is (1 pass) and seed 3's after one Adam step (2); with the official ones both use all 3."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{DEMO_PROMPT}\n")
    options = ["--prompts", str(prompts), "--seeds", "2,3", "--methods", "initno", "--grid", ""]
    options += [f"--set={c}" for c in ("max_rounds=1", "steps_per_round=3", "fallback_steps=0", "quantile=0.99")]
    calibrated = _eval_json(*options)
    assert calibrated["thresholds"]["source"] == "calibrated (q0.99 of 64 noises)"
    assert [(i["passes"], i["valid_at_start"], i["valid_at_end"]) for i in calibrated["images"]] == [
        (1, True, True), (2, False, True),
    ]  # fmt: skip
    official = _eval_json(*options, "--set=thresholds=official")
    assert official["thresholds"] is None and official["changed_params"]["thresholds"] == "official"
    assert [(i["passes"], i["valid_at_end"]) for i in official["images"]] == [(3, False), (3, False)]


def test_each_design_builds_saves_and_loads_as_itself(tmp_path):
    """The second miniature reads 16×16 maps (its 64×64 input, 1/4) at SD1's blocks; a weights file
    carries its design, and the pixels round-trip exactly through each design's model space."""
    from initno.attention import capture_grid
    from initno.miniature import world
    from initno.miniature.evaluate import splits_of

    images, _ = world.training_batch(0, 2)
    for name, design in DESIGNS.items():
        assert (design.to_pixels(design.to_model_space(images)) == images).all()
        model = Miniature.build(design=name)
        model.save(tmp_path / f"{name}.safetensors")
        loaded = Miniature.load(tmp_path / f"{name}.safetensors")
        assert loaded.design is design
        assert torch.equal(loaded.unet.out[2].weight, model.unet.out[2].weight)
    sixteen = DESIGNS["miniature-16"]
    assert capture_grid((sixteen.unet["image_size"],) * 2, 4) == (16, 16)
    # Its text encoder is the first miniature's (frozen in training), so the comma is a word it never learned.
    second, first = Miniature.build(design="miniature-16"), Miniature.build()
    (comma,) = first.tokenizer.encode(",")
    assert torch.equal(second.text_encoder.token_ids, first.text_encoder.token_ids)
    assert comma not in second.text_encoder.token_ids.tolist()
    split = splits_of(second)["confirm"]
    assert len(split.prompts) * len(split.seeds) == 640 and sum("," in p for p in split.prompts) == 10
    with pytest.raises(ValueError, match="unknown miniature 'nope'; miniatures: miniature, miniature-16"):
        Miniature.build(design="nope")


def test_the_learning_rate_warms_up_decays_and_then_holds_its_floor():
    """Warm-up to the peak over 100 steps, cosine to a tenth over `decay_steps`, then that tenth: a run
    extended past its decay (the second miniature: 5000 + 3000) is the same run as one made in one go."""
    from initno.miniature.train import _learning_rate

    assert _learning_rate(0, 5000, 1e-3) == pytest.approx(1e-5)
    assert _learning_rate(99, 5000, 1e-3) == pytest.approx(1e-3)
    assert _learning_rate(2550, 5000, 1e-3) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway: cos = 0
    assert _learning_rate(5000, 5000, 1e-3) == pytest.approx(1e-4)
    assert _learning_rate(7999, 5000, 1e-3) == pytest.approx(1e-4)


def test_training_the_second_miniature_moves_only_its_unet(tmp_path):
    """Two steps of `python -m initno train --model miniature-16`: its UNet learns, while the text encoder
    it borrows from the first miniature stays exactly that one (SD trains against a frozen CLIP)."""
    import argparse

    from initno.miniature.train import add_arguments, train

    def safe_metadata(path):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return handle.metadata()

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    output = tmp_path / "m16.safetensors"
    files = ["--output", str(output), "--checkpoint", str(tmp_path / "state.pt"), "--log", str(tmp_path / "log.json")]
    args = parser.parse_args(["--model", "miniature-16", "--steps", "2", "--batch", "2", *files])
    assert train(args) == 0
    trained, first = Miniature.load(output), Miniature.load()
    fresh = Miniature.build(design="miniature-16")
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    for learned in (trained.text_encoder.state_dict(), state["text"]):  # what ships, and what was trained
        for mine, borrowed in zip(learned.values(), first.text_encoder.state_dict().values(), strict=True):
            assert torch.equal(mine, borrowed)
    assert not torch.equal(trained.unet.out[2].weight, fresh.unet.out[2].weight)
    assert not torch.equal(state["unet"]["out.2.weight"], fresh.unet.out[2].weight)
    assert "miniature (sha256 c195e5cf" in json.loads(safe_metadata(output)["training"])["text_encoder"]
