"""Global pooling of a trunk's feature map into a vector: max (the default) or GeM.

:data:`POOLINGS` names the choices and :func:`build_pooling` makes one::

    >>> pool = build_pooling("gem")
    >>> pool(torch.rand(2, 512, 8, 4)).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import torch
from torch import nn

from crossreid.errors import ConfigError

__all__ = ["POOLINGS", "GeneralizedMeanPooling", "GlobalMaxPooling", "build_pooling"]

#: Pooling choices, by name (``CrossDomainReID(pooling=...)``).
POOLINGS = ("max", "gem")


class GlobalMaxPooling(nn.Module):
    """``[B, C, h, w]`` → ``[B, C]``: the largest value of each channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=(2, 3))


class GeneralizedMeanPooling(nn.Module):
    """Generalised-mean (GeM) pooling with a learnable exponent (Radenović et al., 2018).

    ``[B, C, h, w]`` → ``[B, C]``: ``(mean over h×w of clamp(x, eps)^p)^(1/p)`` per channel,
    with one exponent ``p`` for all channels. ``p = 1`` is average pooling and a large ``p``
    approaches max pooling; ``p`` starts at ``p`` (3, the paper's) and is trained with the
    network. The clamp keeps the fractional power defined (ReLU maps are ``>= 0`` but may
    be exactly 0).

    Args:
        p: initial exponent.
        eps: lower bound of the values raised to ``p``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4g}, eps={self.eps}"


def build_pooling(name: str) -> nn.Module:
    """The pooling module called ``name`` (one of :data:`POOLINGS`)."""
    if name == "max":
        return GlobalMaxPooling()
    if name == "gem":
        return GeneralizedMeanPooling()
    raise ConfigError(f"unknown pooling {name!r}; expected one of {', '.join(POOLINGS)}")
