"""Tests of crossreid.models.pooling: max and GeM pooling, checked by hand."""

from __future__ import annotations

import pytest
import torch

from crossreid.errors import ConfigError
from crossreid.models.pooling import GeneralizedMeanPooling, GlobalMaxPooling, build_pooling

# One sample, two channels of a 2x2 map.
MAP = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def test_max_pooling_takes_each_channels_largest_value():
    assert torch.equal(GlobalMaxPooling()(MAP), torch.tensor([[4.0, 8.0]]))


def test_gem_with_p_1_is_average_pooling():
    pool = GeneralizedMeanPooling(p=1.0)
    # The zeros are clamped to eps = 1e-6 first: channel 2 is (3e-6 + 8) / 4.
    expected = torch.tensor([[2.5, (3e-6 + 8.0) / 4]])
    assert torch.allclose(pool(MAP), expected, rtol=1e-6)


def test_gem_with_p_3_is_the_cube_root_of_the_mean_of_cubes():
    pool = GeneralizedMeanPooling()
    assert pool.p.item() == 3.0 and pool.eps == 1e-6
    # (1 + 8 + 27 + 64) / 4 = 25 and 512 / 4 = 128 (eps^3 is negligible)
    expected = torch.tensor([[25.0 ** (1 / 3), 128.0 ** (1 / 3)]])
    assert torch.allclose(pool(MAP), expected, rtol=1e-6)


def test_gem_lies_between_average_and_max_and_approaches_max_for_a_large_p():
    x = torch.rand(3, 4, 5, 2) + 0.1
    mean, top = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    gem = GeneralizedMeanPooling()(x)
    assert (gem >= mean - 1e-6).all() and (gem <= top + 1e-6).all()
    assert torch.allclose(GeneralizedMeanPooling(p=200.0)(x), top, rtol=0.02)


def test_gradient_reaches_the_exponent():
    pool = GeneralizedMeanPooling()
    pool(MAP).sum().backward()
    # d/dp of (mean x^p)^(1/p) is not 0 unless every value of a channel is equal.
    assert pool.p.grad is not None and pool.p.grad.abs().item() > 0
    assert [name for name, _ in pool.named_parameters()] == ["p"]


def test_build_pooling_names_the_choices():
    assert isinstance(build_pooling("max"), GlobalMaxPooling)
    assert isinstance(build_pooling("gem"), GeneralizedMeanPooling)
    with pytest.raises(ConfigError, match="unknown pooling 'avg'; expected one of max, gem"):
        build_pooling("avg")
