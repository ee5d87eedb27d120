"""The loss terms of a training step, declared once.

Each :class:`LossTerm` names a term (``cls`` — logged as ``loss/cls``, weighted by the config
field ``w_cls``), the network parts it needs (so parts no weighted term reaches are frozen
and never run) and whether it uses the unlabelled target batch. The function computing a
term lives in :data:`crossreid.training.step.LOSS_FUNCTIONS` under the same name.

Adding a loss: one entry here, its ``w_<name>`` field in
:class:`~crossreid.training.config.TrainConfig`, and its function in ``step.py``.

This module imports no torch, so the configuration (and ``crossreid --help``) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOSS_NAMES",
    "LOSS_TERMS",
    "METHODS",
    "NETWORK_PARTS",
    "LossTerm",
    "active_terms",
    "identity_terms",
    "needs_part",
    "supervises_identity",
    "uses_target_batches",
]

#: Training methods. ``arn``: the ARN stage (source labels, unlabelled target batches, the
#: reconstruction / difference / MMD alignment). ``cluster``: the pseudo-label stage
#: (:mod:`crossreid.training.cluster`), usually started from an ARN run with ``init_from``.
METHODS = ("arn", "cluster")

#: Network parts a term can need, and the attribute of the model that holds each.
NETWORK_PARTS = {"pose": "pose_encoder", "decoder": "decoder", "logits": "classifier"}


@dataclass(frozen=True)
class LossTerm:
    """One loss term: its name, what it needs, what it does."""

    name: str
    description: str
    needs: frozenset[str] = frozenset()
    uses_target: bool = False
    supervises_identity: bool = False
    methods: frozenset[str] = frozenset({"arn"})

    @property
    def weight_field(self) -> str:
        """The :class:`~crossreid.training.config.TrainConfig` field of its weight."""
        return f"w_{self.name}"

    def weight(self, config: Any) -> float:
        return float(getattr(config, self.weight_field))


#: The terms in the order they are logged; ``total`` is their weighted sum.
LOSS_TERMS = (
    LossTerm(
        "cls",
        "cross-entropy of the source identity logits",
        frozenset({"logits"}),
        supervises_identity=True,
        methods=frozenset({"arn", "cluster"}),
    ),
    LossTerm(
        "rec",
        "L1/L2 cross-reconstruction of source positives and self-reconstruction of targets",
        frozenset({"pose", "decoder"}),
        uses_target=True,
    ),
    LossTerm(
        "dif",
        "orthogonality of identity and pose vectors",
        frozenset({"pose"}),
        uses_target=True,
    ),
    LossTerm("mmd", "MMD between source and target identity vectors", uses_target=True),
    LossTerm("ctr", "contrastive loss on source identity vectors", supervises_identity=True),
    LossTerm("tri", "batch-hard triplet loss on source identity vectors", supervises_identity=True),
    LossTerm(
        "ccl",
        "cross-entropy of target identity vectors against the pseudo-identity centroid memory",
        supervises_identity=True,
        methods=frozenset({"cluster"}),
    ),
)
LOSS_NAMES = tuple(term.name for term in LOSS_TERMS)


def active_terms(config: Any) -> tuple[LossTerm, ...]:
    """The terms of the config's method with a weight above 0 (the only ones computed)."""
    return tuple(
        term for term in LOSS_TERMS if config.method in term.methods and term.weight(config) > 0
    )


def needs_part(config: Any, part: str) -> bool:
    """Whether a weighted term needs network part ``part`` (a key of :data:`NETWORK_PARTS`)."""
    return any(part in term.needs for term in active_terms(config))


def supervises_identity(config: Any) -> bool:
    """Whether a weighted term teaches the identity encoder from (pseudo-)labels."""
    return any(term.supervises_identity for term in active_terms(config))


def identity_terms(method: str) -> tuple[LossTerm, ...]:
    """The terms of ``method`` that teach the identity encoder."""
    return tuple(t for t in LOSS_TERMS if t.supervises_identity and method in t.methods)


def uses_target_batches(config: Any) -> bool:
    """Whether training draws unlabelled target batches: adapt mode with a weighted term that
    uses them, or the target colour transfer."""
    return (
        config.method == "arn"
        and config.mode == "adapt"
        and (any(term.uses_target for term in active_terms(config)) or config.target_style_prob > 0)
    )
