"""Synthetic cross-domain pedestrian data in Market-1501 layout.

Example::

    >>> from crossreid.data.synthetic import SyntheticConfig, generate_domain
    >>> meta = generate_domain(SyntheticConfig(domain="B", num_ids=60), "data/B")  # doctest: +SKIP
    >>> meta["counts"]["query"]                                                   # doctest: +SKIP

Domains share one distribution of people and differ in camera style
(:data:`~crossreid.data.synthetic.styles.DOMAINS`).
"""

from crossreid.data.synthetic.generator import (
    GENERATOR_VERSION,
    META_FILE,
    DomainRenderer,
    SyntheticConfig,
    generate_domain,
    parse_size,
    plan_split,
    read_meta,
    render_preview,
)
from crossreid.data.synthetic.styles import DOMAINS, CameraStyle, DomainSpec

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "META_FILE",
    "CameraStyle",
    "DomainRenderer",
    "DomainSpec",
    "SyntheticConfig",
    "generate_domain",
    "parse_size",
    "plan_split",
    "read_meta",
    "render_preview",
]
