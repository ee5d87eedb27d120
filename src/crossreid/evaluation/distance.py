"""Pairwise distances between query and gallery features.

Every metric returns a *distance*: smaller means more similar, so the ranking code never
needs to know which metric produced its input.

=============  ==============================================================
``"L1"``       Manhattan distance ``sum_k |q_k - g_k|``
``"L2"``       Euclidean distance ``sqrt(sum_k (q_k - g_k)^2)`` (not squared; the
               ranking is the same either way)
``"cosine"``   ``1 - cos(q, g)``, in ``[0, 2]``
``"correlation"``  ``1 - pearson(q, g)`` (cosine of the mean-centred vectors, as
               :func:`scipy.spatial.distance.correlation`), in ``[0, 2]``
=============  ==============================================================

A zero vector (or, for ``"correlation"``, a constant one) has no direction; it is treated
as orthogonal to everything (distance 1), like :func:`torch.nn.functional.normalize` does.

NumPy in, NumPy out; torch in, torch out (on the tensor's device). The result is float64
when either input is float64 (or an integer type), float32 otherwise. Distances are for
evaluation: the torch path runs without autograd.

Example::

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]], dtype=np.float32)
    >>> g = np.array([[0.0, 2.0], [3.0, 0.0]], dtype=np.float32)
    >>> pairwise_distance(q, g, "cosine")
    array([[1., 0.]], dtype=float32)
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from crossreid.errors import EvaluationError

__all__ = ["METRICS", "pairwise_distance", "GalleryDistance", "check_metric"]

METRICS: tuple[str, ...] = ("L1", "L2", "cosine", "correlation")
_CANONICAL = {name.lower(): name for name in METRICS}

# Output elements per torch.cdist call for L1 (bounds its temporaries).
_L1_BLOCK_ELEMENTS = 1 << 22
# Norms below this are treated as zero (same constant as torch.nn.functional.normalize).
_EPS = 1e-12


def check_metric(metric: str) -> str:
    """Return the canonical spelling of ``metric`` or raise :class:`EvaluationError`."""
    name = _CANONICAL.get(str(metric).lower())
    if name is None:
        raise EvaluationError(
            f"unknown distance metric {metric!r}; expected one of {', '.join(METRICS)}"
        )
    return name


def _is_torch(x: Any) -> bool:
    # Only consult torch if something already imported it: a tensor cannot exist otherwise,
    # and importing torch just to answer "no" would cost a second.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _result_dtype_np(*arrays: np.ndarray) -> np.dtype:
    for a in arrays:
        if a.dtype == np.float64 or not np.issubdtype(a.dtype, np.floating):
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def _check_shapes(qf_shape: tuple, gf_shape: tuple) -> None:
    if len(qf_shape) != 2:
        raise EvaluationError(
            f"query features must be a 2-D array (num_query, dim), got shape {tuple(qf_shape)}"
        )
    if len(gf_shape) != 2:
        raise EvaluationError(
            f"gallery features must be a 2-D array (num_gallery, dim), got shape {tuple(gf_shape)}"
        )
    if qf_shape[0] == 0:
        raise EvaluationError("the query set is empty (0 query features)")
    if gf_shape[0] == 0:
        raise EvaluationError("the gallery is empty (0 gallery features)")
    if qf_shape[1] != gf_shape[1]:
        raise EvaluationError(
            f"query and gallery features have different dimensions: {qf_shape[1]} vs {gf_shape[1]}"
        )


def _non_finite_error(which: str) -> EvaluationError:
    return EvaluationError(f"{which} features contain NaN or infinite values")


class GalleryDistance:
    """Distances from any query block to one gallery, with the gallery prepared once.

    ``evaluate_features`` calls :meth:`__call__` once per query chunk; normalising (or
    centring) the gallery only once is what makes that as cheap as one big product.

    Args:
        gf: gallery features, shape ``(G, d)``, NumPy array or torch tensor.
        metric: one of :data:`METRICS` (case-insensitive).
    """

    def __init__(self, gf: Any, metric: str = "cosine") -> None:
        self.metric = check_metric(metric)
        self.is_torch = _is_torch(gf)
        if not self.is_torch:
            gf = np.asarray(gf)
        if gf.ndim != 2:
            raise EvaluationError(
                f"gallery features must be a 2-D array (num_gallery, dim), got shape {tuple(gf.shape)}"
            )
        if gf.shape[0] == 0:
            raise EvaluationError("the gallery is empty (0 gallery features)")
        self.num_gallery, self.dim = int(gf.shape[0]), int(gf.shape[1])
        self._raw = gf
        self._g, self._aux = self._prepare(gf, "gallery")

    # ----------------------------------------------------------------- preparation
    def _prepare(self, x: Any, which: str) -> tuple[Any, Any]:
        """Metric-specific transform of one side; also the NaN/inf check (free here)."""
        if self.is_torch:
            return self._prepare_torch(x, which)
        return self._prepare_numpy(x, which)

    def _prepare_numpy(self, x: np.ndarray, which: str) -> tuple[np.ndarray, Any]:
        dtype = _result_dtype_np(x, *([] if which == "gallery" else [self._raw]))
        x = np.asarray(x, dtype=dtype)
        if self.metric == "L1":
            if not np.isfinite(x).all():
                raise _non_finite_error(which)
            return x, None
        with np.errstate(over="ignore", invalid="ignore"):
            if self.metric == "correlation":
                x = x - x.mean(axis=1, keepdims=True, dtype=np.float64).astype(dtype)
            sq = np.einsum("ij,ij->i", x, x)
        # A NaN/inf anywhere makes its row's squared norm non-finite; confirm with the exact
        # test only then (the squares can also overflow for huge but finite values).
        if not np.isfinite(sq).all():
            if not np.isfinite(x).all():
                raise _non_finite_error(which)
            rows = ~np.isfinite(sq)
            wide = x[rows].astype(np.float64)
            sq = sq.astype(np.float64)
            sq[rows] = np.einsum("ij,ij->i", wide, wide)
        if self.metric == "L2":
            return x, sq.astype(dtype, copy=False)
        norm = np.sqrt(sq.astype(np.float64))
        inv = (1.0 / np.maximum(norm, _EPS)).astype(dtype)
        # Normalising the inputs (Q*d + G*d values) is cheaper than scaling the Q*G output.
        return x * inv[:, None], None

    def _prepare_torch(self, x: Any, which: str) -> tuple[Any, Any]:
        import torch  # only for tensor inputs: NumPy-only use stays torch-free

        x = x.detach()
        other = None if which == "gallery" else self._raw
        wide = x.dtype == torch.float64 or not x.is_floating_point()
        if other is not None:
            wide = wide or other.dtype == torch.float64 or not other.is_floating_point()
            x = x.to(other.device)
        x = x.to(torch.float64 if wide else torch.float32)
        if self.metric == "L1":
            if not bool(torch.isfinite(x).all()):
                raise _non_finite_error(which)
            return x, None
        if self.metric == "correlation":
            x = x - x.mean(dim=1, keepdim=True)
        sq = (x * x).sum(dim=1)
        if not bool(torch.isfinite(sq).all()) and not bool(torch.isfinite(x).all()):
            raise _non_finite_error(which)
        if self.metric == "L2":
            return x, sq
        return x / sq.sqrt().clamp_min(_EPS)[:, None], None

    # ----------------------------------------------------------------- distances
    def __call__(self, qf: Any, out: Any = None) -> Any:
        """Distances ``(Q, G)`` from query features ``qf`` ``(Q, d)`` to the gallery.

        ``out``, if given, receives the result (must have the right shape and dtype).
        """
        if self.is_torch != _is_torch(qf):
            if self.is_torch:
                import torch  # only for tensor inputs: NumPy-only use stays torch-free

                qf = torch.as_tensor(np.asarray(qf))
            else:
                qf = qf.detach().cpu().numpy()
        if not self.is_torch:
            qf = np.asarray(qf)
        _check_shapes(tuple(qf.shape), (self.num_gallery, self.dim))
        if self.is_torch:
            import torch  # only for tensor inputs: NumPy-only use stays torch-free

            with torch.no_grad():
                return self._distances_torch(qf, out)
        return self._distances_numpy(qf, out)

    def _distances_numpy(self, qf: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        q, q_aux = self._prepare(qf, "query")
        g, g_aux = self._g, self._aux
        dtype = np.result_type(q.dtype, g.dtype)
        if g.dtype != dtype:  # a float64 query against a float32 gallery: redo it wide
            g, g_aux = self._prepare_numpy(self._raw.astype(dtype), "gallery")
        num_q, num_g = q.shape[0], g.shape[0]
        if out is None:
            out = np.empty((num_q, num_g), dtype=dtype)
        elif out.shape != (num_q, num_g) or out.dtype != dtype:
            raise EvaluationError(
                f"out has shape {out.shape} and dtype {out.dtype}; expected {(num_q, num_g)} {dtype}"
            )
        q = q.astype(dtype, copy=False)
        g = g.astype(dtype, copy=False)
        if self.metric == "L1":
            self._l1_numpy(q, g, out)
            return out
        # One product into the result, then in-place passes: no Q x G temporary.
        np.matmul(q, g.T, out=out)
        if self.metric == "L2":
            out *= -2.0
            out += q_aux[:, None]
            out += g_aux[None, :]
            np.maximum(out, 0.0, out=out)  # rounding can make d^2 slightly negative
            np.sqrt(out, out=out)
        else:
            np.subtract(1.0, out, out=out)
        return out

    def _l1_numpy(self, q: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
        # torch.cdist has a vectorised L1 kernel; NumPy would need a (b, G, d) temporary.
        import torch  # only for tensor inputs: NumPy-only use stays torch-free

        tq, tg = torch.from_numpy(q), torch.from_numpy(g)
        q_block, g_block = self._l1_blocks(q.shape[0], g.shape[0])
        with torch.no_grad():
            for s in range(0, q.shape[0], q_block):
                for t in range(0, g.shape[0], g_block):
                    block = torch.cdist(tq[s : s + q_block], tg[t : t + g_block], p=1.0)
                    out[s : s + q_block, t : t + g_block] = block.numpy()

    @staticmethod
    def _l1_blocks(num_q: int, num_g: int) -> tuple[int, int]:
        g_block = min(num_g, 4096)
        return max(1, min(num_q, _L1_BLOCK_ELEMENTS // g_block)), g_block

    def _distances_torch(self, qf: Any, out: Any) -> Any:
        import torch  # only for tensor inputs: NumPy-only use stays torch-free

        q, q_aux = self._prepare(qf, "query")
        g, g_aux = self._g, self._aux
        dtype = torch.promote_types(q.dtype, g.dtype)
        if g.dtype != dtype:  # a float64 query against a float32 gallery: redo it wide
            g, g_aux = self._prepare_torch(self._raw.to(dtype), "gallery")
        num_q, num_g = q.shape[0], g.shape[0]
        if out is None:
            out = torch.empty((num_q, num_g), dtype=dtype, device=g.device)
        if self.metric == "L1":
            q_block, g_block = self._l1_blocks(num_q, num_g)
            for s in range(0, num_q, q_block):
                for t in range(0, num_g, g_block):
                    out[s : s + q_block, t : t + g_block] = torch.cdist(
                        q[s : s + q_block], g[t : t + g_block], p=1.0
                    )
            return out
        if self.metric == "L2":
            # |q|^2 + |g|^2 - 2 q.g as one fused addmm into the result, then in place.
            out.copy_(q_aux[:, None]).add_(g_aux[None, :])
            out.addmm_(q, g.T, beta=1.0, alpha=-2.0)
            out.clamp_(min=0.0).sqrt_()
        else:
            torch.mm(q, g.T, out=out)
            out.neg_().add_(1.0)
        return out


def pairwise_distance(qf: Any, gf: Any, metric: str = "cosine") -> Any:
    """Distance matrix between query and gallery features (smaller = closer).

    Args:
        qf: query features, shape ``(Q, d)``, NumPy array or torch tensor.
        gf: gallery features, shape ``(G, d)``, same kind as ``qf`` (a NumPy/torch mix is
            computed with torch).
        metric: ``"L1"``, ``"L2"`` (Euclidean, not squared), ``"cosine"`` (``1 - cos``) or
            ``"correlation"`` (``1 - Pearson``); case-insensitive.

    Returns:
        ``(Q, G)`` distances: NumPy array for NumPy inputs, torch tensor (on ``gf``'s device)
        when either input is a tensor. float64 if either input is float64 or integer,
        float32 otherwise. One matrix product written straight into the result and then
        transformed in place (L1: block by block), so the only large allocation is the
        result itself, plus a normalised copy of the features for cosine/correlation.

    Raises:
        EvaluationError: unknown metric, arrays not 2-D, empty query or gallery, different
            feature dimensions, or NaN/inf in the features.
    """
    metric = check_metric(metric)
    if _is_torch(qf) and not _is_torch(gf):
        import torch  # only for tensor inputs: NumPy-only use stays torch-free

        gf = torch.as_tensor(np.asarray(gf), device=qf.device)
    if not _is_torch(qf) and not _is_torch(gf):
        qf, gf = np.asarray(qf), np.asarray(gf)
    _check_shapes(tuple(qf.shape), tuple(gf.shape))
    return GalleryDistance(gf, metric)(qf)
