"""Train/test transforms, the pose encoder's colour jitter and (un)normalisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from crossreid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    denormalize,
    normalize,
    pose_jitter,
)
from crossreid.errors import ConfigError


def _half_black_half_white(height: int = 16, width: int = 8) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


def _expected_normalised(value: int, channel: int) -> float:
    return (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def test_train_transform_shape_and_dtype_from_other_size() -> None:
    image = Image.fromarray(np.full((40, 20, 3), 128, dtype=np.uint8))
    out = build_transforms((32, 16), train=True, random_erasing=0.5)(image)
    assert out.shape == (3, 32, 16)
    assert out.dtype == torch.float32


def test_test_transform_is_exact_normalisation_and_deterministic() -> None:
    transform = build_transforms((16, 8), train=False)
    image = _half_black_half_white()
    torch.manual_seed(1)
    first = transform(image)
    torch.manual_seed(2)
    second = transform(image)
    assert torch.equal(first, second)
    for c in range(3):
        # Never flipped: the left half stays black, the right half white.
        assert torch.allclose(first[c, :, :4], torch.tensor(_expected_normalised(0, c)))
        assert torch.allclose(first[c, :, 4:], torch.tensor(_expected_normalised(255, c)))


def test_train_flip_with_probability_one_mirrors_the_test_output() -> None:
    image = _half_black_half_white()
    flipped = build_transforms((16, 8), train=True, flip_prob=1.0, pad=0)(image)
    plain = build_transforms((16, 8), train=False)(image)
    assert torch.equal(flipped, plain.flip(-1))


def test_pad_and_crop_shifts_content_with_zero_fill() -> None:
    image = Image.fromarray(np.full((16, 8, 3), 255, dtype=np.uint8))
    transform = build_transforms((16, 8), train=True, flip_prob=0.0, pad=4)
    white = torch.tensor([_expected_normalised(255, c) for c in range(3)]).view(3, 1, 1)
    black = torch.tensor([_expected_normalised(0, c) for c in range(3)]).view(3, 1, 1)
    saw_border = False
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(image)
        is_white = torch.isclose(out, white).all(0)
        is_black = torch.isclose(out, black).all(0)
        assert (is_white | is_black).all()  # only image pixels or zero padding
        saw_border |= bool(is_black.any())
    assert saw_border


def test_random_erasing_fills_a_rectangle_with_the_mean_colour() -> None:
    image = Image.fromarray(np.full((32, 16, 3), 255, dtype=np.uint8))
    torch.manual_seed(0)
    out = build_transforms((32, 16), train=True, pad=0, flip_prob=0.0, random_erasing=1.0)(image)
    erased = (out == 0).all(0)
    assert erased.any() and not erased.all()
    rows, cols = torch.nonzero(erased, as_tuple=True)
    box = erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all()  # one solid rectangle


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": (0, 8)},
        {"image_size": "big"},
        {"image_size": (16, 8), "flip_prob": 1.5},
        {"image_size": (16, 8), "random_erasing": -0.1},
        {"image_size": (16, 8), "pad": -1},
        {"image_size": (16, 8), "std": (0.1, 0.0, 0.1)},
    ],
)
def test_bad_transform_options_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_transforms(train=True, **kwargs)


def _channel_images(batch: int) -> torch.Tensor:
    """Image b has constant channels with distinct values (identity mean/std = pixels)."""
    values = torch.tensor([[0.1, 0.2, 0.7]]) + 0.01 * torch.arange(batch).view(-1, 1)
    return values.view(batch, 3, 1, 1).expand(batch, 3, 4, 2).clone()


def _matches_permutation_or_inversion(out: torch.Tensor, src: torch.Tensor) -> tuple:
    for perm in itertools.permutations(range(3)):
        permuted = src[list(perm)]
        if torch.allclose(out, permuted, atol=1e-6):
            return perm, False
        if torch.allclose(out, 1 - permuted, atol=1e-6):
            return perm, True
    raise AssertionError("output is not a channel permutation (or its inversion) of the input")


def test_pose_jitter_is_a_per_image_channel_permutation_and_inversion() -> None:
    images = _channel_images(64)
    out = pose_jitter(images, torch.Generator().manual_seed(0), mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == images.shape
    seen = {_matches_permutation_or_inversion(out[b], images[b]) for b in range(len(images))}
    # Every one of the 6 orders appears, each with and without inversion (fixed seed).
    assert {p for p, _ in seen} == set(itertools.permutations(range(3)))
    assert {inv for _, inv in seen} == {False, True}


def test_pose_jitter_hand_made_example() -> None:
    image = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    keys = torch.rand(1, 3, generator=gen)
    invert = bool(torch.rand(1, generator=gen) < 0.5)
    perm = keys.argsort(dim=1)[0].tolist()
    expected = torch.tensor([0.0, 0.25, 1.0])[perm]
    if invert:
        expected = 1 - expected
    out = pose_jitter(image, torch.Generator().manual_seed(0), mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.equal(out.view(3), expected)


@pytest.mark.parametrize("invert_prob, inverted", [(0.0, False), (1.0, True)])
def test_pose_jitter_inversion_probability(invert_prob: float, inverted: bool) -> None:
    images = _channel_images(16)
    out = pose_jitter(
        images,
        torch.Generator().manual_seed(3),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        invert_prob=invert_prob,
    )
    for b in range(16):
        assert _matches_permutation_or_inversion(out[b], images[b])[1] is inverted


def test_pose_jitter_works_in_pixel_space_with_imagenet_statistics() -> None:
    pixels = torch.rand(8, 3, 6, 4, generator=torch.Generator().manual_seed(1))
    out = pose_jitter(normalize(pixels), torch.Generator().manual_seed(5))
    jittered = denormalize(out, clamp=False)
    for b in range(8):
        _matches_permutation_or_inversion(jittered[b], pixels[b])


def test_pose_jitter_is_reproducible_with_a_generator() -> None:
    images = torch.randn(5, 3, 8, 4)
    first = pose_jitter(images, torch.Generator().manual_seed(7))
    second = pose_jitter(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_denormalize_inverts_normalize_and_clamps() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    assert torch.allclose(denormalize(normalize(pixels)), pixels, atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0
    assert denormalize(torch.zeros(3, 2, 2)).shape == (3, 2, 2)


def test_transfer_colour_statistics_takes_the_reference_channel_statistics():
    from crossreid.data.transforms import normalize, transfer_colour_statistics

    # Image: channel c holds the pixels {0.4, 0.6} (mean 0.5, std 0.1414); reference:
    # channel c holds {0.1, 0.3} (mean 0.2), {0.45, 0.55} (mean 0.5), {0.7, 0.9} (mean 0.8).
    image = torch.tensor([0.4, 0.6, 0.4, 0.6]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    ref = torch.stack(
        [
            torch.tensor([0.1, 0.3, 0.1, 0.3]),
            torch.tensor([0.45, 0.55, 0.45, 0.55]),
            torch.tensor([0.7, 0.9, 0.7, 0.9]),
        ]
    ).view(1, 3, 2, 2)
    out = transfer_colour_statistics(normalize(image), normalize(ref), prob=1.0)
    pixels = denormalize(out, clamp=False)
    # Same content (low, high, low, high), moved to each reference channel's mean and spread.
    torch.testing.assert_close(pixels, ref, atol=1e-5, rtol=0)


def test_transfer_colour_statistics_prob_zero_is_identity_and_is_seeded():
    from crossreid.data.transforms import transfer_colour_statistics

    images = torch.randn(4, 3, 8, 4)
    refs = torch.randn(3, 3, 8, 4) * 0.5 - 1
    torch.testing.assert_close(transfer_colour_statistics(images, refs, prob=0.0), images)
    a = transfer_colour_statistics(images, refs, torch.Generator().manual_seed(3), prob=0.5)
    b = transfer_colour_statistics(images, refs, torch.Generator().manual_seed(3), prob=0.5)
    assert a.shape == images.shape and torch.equal(a, b)
