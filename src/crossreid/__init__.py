"""crossreid: cross-domain person re-identification in PyTorch."""

__version__ = "0.1.0"
