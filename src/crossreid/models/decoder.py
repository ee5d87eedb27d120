"""The fully convolutional decoder: (identity map ⊕ pose map) → image."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decoder", "UpBlock"]

#: Negative slope of the decoder's LeakyReLUs (the usual choice for image decoders).
LEAKY_SLOPE = 0.2


class UpBlock(nn.Sequential):
    """Nearest-neighbour upsample ×2, 3×3 conv, BatchNorm, LeakyReLU.

    ``[B, in_channels, h, w]`` → ``[B, out_channels, 2h, 2w]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


class Decoder(nn.Module):
    """Reconstructs an image from the channel concatenation of an identity and a pose map.

    ``len(widths)`` :class:`UpBlock` s (``in_channels → widths[0] → … → widths[-1]``), then
    one more ×2 upsample and a 3×3 conv to 3 channels, so ``len(widths) + 1`` doublings in
    all (five with the default four widths, undoing the trunk's stride of 32). If that does
    not land exactly on ``output_size`` (an image size that is not a multiple of
    ``2 ** (len(widths) + 1)``), the result is bilinearly resized to ``output_size``.

    The output has no final activation: it lives in the same value space as the
    mean/std-normalised input images, which is what the reconstruction loss compares it with.

    Args:
        in_channels: channels of the concatenated maps (2 × the trunk's channels).
        widths: output channels of each upsampling block.
        output_size: ``(H, W)`` of the reconstructed image.

    Shapes: ``[B, in_channels, h, w]`` → ``[B, 3, H, W]``.
    """

    def __init__(
        self, in_channels: int, widths: Sequence[int], output_size: tuple[int, int]
    ) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(*(UpBlock(c_in, c_out) for c_in, c_out in pairwise(channels)))
        self.to_image = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels[-1], 3, kernel_size=3, padding=1),
        )
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, a=LEAKY_SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        image = self.to_image(self.blocks(maps))
        if tuple(image.shape[-2:]) != self.output_size:
            image = F.interpolate(
                image, size=self.output_size, mode="bilinear", align_corners=False
            )
        return image
