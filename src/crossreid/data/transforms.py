"""Image transforms: train/test pipelines, the pose encoder's colour jitter, un-normalisation.

The train pipeline is the usual re-ID augmentation (resize, horizontal flip, pad and
random crop, optional random erasing); the test pipeline is resize + normalise only, so
features are a deterministic function of the image (the seed's draft flipped test images
at random, which made evaluation irreproducible).

Example::

    >>> train_tf = build_transforms((256, 128), train=True, random_erasing=0.5)
    >>> test_tf = build_transforms((256, 128), train=False)
    >>> x = test_tf(pil_image)                     # doctest: +SKIP
    >>> x.shape, x.dtype                           # doctest: +SKIP
    (torch.Size([3, 256, 128]), torch.float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from crossreid.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_transforms",
    "denormalize",
    "normalize",
    "pose_jitter",
]


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image size {image_size!r} is not a pair (height, width)") from None
    if height < 1 or width < 1:
        raise ConfigError(f"image size {height}x{width} must be positive")
    return height, width


def build_transforms(
    image_size: Sequence[int],
    *,
    train: bool,
    flip_prob: float = 0.5,
    pad: int = 10,
    random_erasing: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """PIL image → normalised float tensor ``[3, H, W]``.

    Args:
        image_size: ``(H, W)`` of the output.
        train: ``True`` for the augmenting pipeline (resize → horizontal flip with
            ``flip_prob`` → zero-pad by ``pad`` pixels and crop back to ``(H, W)`` at a random
            position → float in [0, 1] → normalise → random erasing with probability
            ``random_erasing``); ``False`` for resize → float → normalise, with no randomness.
        flip_prob: probability of a horizontal flip (train only).
        pad: padding before the random crop, in pixels; 0 disables pad-and-crop.
        random_erasing: probability of erasing a random rectangle (train only). The
            rectangle is filled with 0 in normalised space, i.e. with the mean colour.
        mean, std: per-channel normalisation, in [0, 1] pixel units.

    Randomness comes from torch's global generator, so a caller can make one sample's
    augmentation reproducible by seeding that generator (the loaders do this per sample).
    """
    size = _check_size(image_size)
    if not 0.0 <= flip_prob <= 1.0:
        raise ConfigError(f"flip probability {flip_prob} must be in [0, 1]")
    if not 0.0 <= random_erasing <= 1.0:
        raise ConfigError(f"random erasing probability {random_erasing} must be in [0, 1]")
    if pad < 0:
        raise ConfigError(f"padding {pad} must be >= 0")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean {tuple(mean)} and std {tuple(std)} must be 3 values, std > 0")

    steps: list[v2.Transform] = [
        # Tensor first: v2's tensor resize is as fast as PIL's here and faster on large crops.
        v2.ToImage(),
        v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
    ]
    if train:
        if flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(flip_prob))
        if pad > 0:
            steps.append(v2.RandomCrop(size, padding=pad, fill=0))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def _stats(mean: Sequence[float], std: Sequence[float], like: Tensor) -> tuple[Tensor, Tensor]:
    m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return m, s


def denormalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    clamp: bool = True,
) -> Tensor:
    """Normalised ``[B, 3, H, W]`` (or ``[3, H, W]``) → pixel values in [0, 1] (for image grids)."""
    batched = images if images.dim() == 4 else images.unsqueeze(0)
    m, s = _stats(mean, std, batched)
    out = batched * s + m
    if clamp:
        out = out.clamp(0.0, 1.0)
    return out if images.dim() == 4 else out.squeeze(0)


def normalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Pixel values ``[B, 3, H, W]`` in [0, 1] → normalised; the inverse of :func:`denormalize`."""
    m, s = _stats(mean, std, images)
    return (images - m) / s


def pose_jitter(
    images: Tensor,
    generator: torch.Generator | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    invert_prob: float = 0.5,
) -> Tensor:
    """The colour jitter the pose encoder sees, so it cannot carry clothing colour.

    Per image, independently: a uniformly random permutation of the three colour channels
    (all six orders, the identity included), then with probability ``invert_prob`` an
    inversion ``x → 1 − x``. Both act in [0, 1] pixel space: the batch is un-normalised with
    ``mean``/``std``, jittered and re-normalised, so the result is again a normalised image.
    Vectorised over the batch.

    Args:
        images: normalised images ``[B, 3, H, W]`` on any device.
        generator: random source (a CPU generator works for images on any device);
            ``None`` uses torch's global generator.
    Returns:
        ``[B, 3, H, W]``, same dtype and device as ``images``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"pose_jitter expects images [B, 3, H, W], got {tuple(images.shape)}")
    batch = images.shape[0]
    draw_device = generator.device if generator is not None else images.device
    # Random keys sorted per row give a uniform random permutation of the 3 channels.
    keys = torch.rand(batch, 3, generator=generator, device=draw_device)
    perm = keys.argsort(dim=1).to(images.device)
    invert = (torch.rand(batch, generator=generator, device=draw_device) < invert_prob).to(
        images.device
    )

    m, s = _stats(mean, std, images)
    pixels = images * s + m
    index = perm.view(batch, 3, 1, 1).expand_as(pixels)
    pixels = pixels.gather(1, index)
    pixels = torch.where(invert.view(batch, 1, 1, 1), 1.0 - pixels, pixels)
    return (pixels - m) / s


def transfer_colour_statistics(
    images: Tensor,
    references: Tensor,
    generator: torch.Generator | None = None,
    *,
    prob: float = 1.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    eps: float = 1e-3,
) -> Tensor:
    """Give images the colour statistics of random reference images (pixel-level adaptation).

    Per image, with probability ``prob``: pick a random reference image and replace the
    image's per-channel pixel mean and standard deviation by the reference's
    (``(x - mu_x) / sigma_x * sigma_r + mu_r``, clamped to [0, 1]). With unlabelled *target*
    images as references, labelled source images take on the target cameras' brightness,
    contrast and colour cast while keeping their content, so the identity encoder learns
    on target-like colours. This is the zeroth-order form of low-frequency style transfer
    used in pixel-level domain adaptation (e.g. Fourier Domain Adaptation, CVPR 2020).

    Args:
        images: normalised ``[B, 3, H, W]``.
        references: normalised ``[R, 3, H', W']`` (any spatial size), same device.
        generator: random source (a CPU generator works for images on any device).
    Returns:
        normalised ``[B, 3, H, W]``, same dtype and device as ``images``.
    """
    if images.dim() != 4 or images.shape[1] != 3 or references.dim() != 4:
        raise ValueError(
            "transfer_colour_statistics expects images [B, 3, H, W] and references "
            f"[R, 3, H, W], got {tuple(images.shape)} and {tuple(references.shape)}"
        )
    batch = images.shape[0]
    draw_device = generator.device if generator is not None else images.device
    pick = torch.randint(references.shape[0], (batch,), generator=generator, device=draw_device).to(
        images.device
    )
    apply = (torch.rand(batch, generator=generator, device=draw_device) < prob).to(images.device)

    m, s = _stats(mean, std, images)
    pixels = images * s + m
    ref = (references * s + m)[pick]
    mu, sigma = pixels.mean((2, 3), keepdim=True), pixels.std((2, 3), keepdim=True)
    ref_mu, ref_sigma = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    styled = ((pixels - mu) / sigma.clamp_min(eps) * ref_sigma + ref_mu).clamp(0.0, 1.0)
    pixels = torch.where(apply.view(batch, 1, 1, 1), styled, pixels)
    return (pixels - m) / s
