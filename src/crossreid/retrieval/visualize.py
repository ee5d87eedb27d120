"""Ranked-results pictures: a query crop followed by its top-k gallery matches.

Each match gets a coloured border by its status:

* ``"correct"`` — green: same identity, seen by another camera (a true match);
* ``"wrong"`` — red: another identity;
* ``"junk"`` — grey border and a washed-out crop: ignored by the evaluation protocol
  (same identity *and* same camera as the query);
* ``"unknown"`` — neutral (blue-grey) border: no labels to judge by (free-form search).

:func:`render_ranked_rows` draws any number of rows into one PNG (the demo reuses it);
:func:`visualize_ranked_results` writes one picture per query of an evaluation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from crossreid.data.base import ImageRecord
from crossreid.errors import EvaluationError
from crossreid.retrieval.index import build_index

logger = logging.getLogger(__name__)

__all__ = [
    "visualize_feature_arrays",
    "STATUS_COLOURS",
    "RankedRow",
    "match_status",
    "render_ranked_rows",
    "visualize_features",
    "visualize_ranked_results",
]

STATUS_COLOURS: dict[str, tuple[int, int, int]] = {
    "correct": (0, 170, 0),
    "wrong": (220, 0, 0),
    "junk": (150, 150, 150),
    "unknown": (90, 110, 140),
    "query": (20, 20, 20),
}
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


@dataclass
class RankedRow:
    """One row of a ranked-results picture.

    Attributes:
        query: path of the query image.
        matches: ``(gallery path, status)`` pairs, best match first; status is one of
            ``"correct" | "wrong" | "junk" | "unknown"``.
        label: optional text drawn above the row (e.g. ``"source-only"``).
        scores: optional per-match numbers printed under the crops (e.g. distances).
    """

    query: str
    matches: Sequence[tuple[str, str]]
    label: str | None = None
    scores: Sequence[float] | None = None


def match_status(q_pid: int, q_camid: int, g_pid: int, g_camid: int) -> str:
    """Status of a gallery item for a query under the Market/Duke protocol.

    ``"unknown"`` when either side has no label (pid ``< 0``, e.g. crops from a plain
    folder); ``"junk"`` for the same pid and camera (discarded by the protocol);
    otherwise ``"correct"`` for the same pid and ``"wrong"`` for another.
    """
    if q_pid < 0 or g_pid < 0:
        return "unknown"
    if g_pid == q_pid and g_camid == q_camid:
        return "junk"
    return "correct" if g_pid == q_pid else "wrong"


def _load_tile(path: str, size: tuple[int, int], greyed: bool) -> Image.Image:
    """The image at ``path`` resized to ``size`` (w, h), or a placeholder if unreadable."""
    try:
        with Image.open(path) as image:
            tile = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s for the ranked-results picture (%s)", path, exc)
        tile = Image.new("RGB", size, (200, 200, 200))
        ImageDraw.Draw(tile).line([(0, 0), size], fill=(120, 120, 120), width=2)
    if greyed:
        # Washed-out greyscale: visibly "does not count" while staying recognisable.
        tile = Image.blend(
            ImageOps.grayscale(tile).convert("RGB"), Image.new("RGB", size, _BACKGROUND), 0.45
        )
    return tile


def render_ranked_rows(
    rows: Iterable[RankedRow | tuple],
    out_png: str | os.PathLike[str],
    *,
    tile_size: tuple[int, int] = (64, 128),
    border: int = 4,
    gap: int = 6,
    title: str | None = None,
) -> Path:
    """Draw ranked-results rows into one PNG.

    Args:
        rows: :class:`RankedRow` objects, or tuples ``(query, matches[, label[, scores]])``.
        out_png: file to write (parent folders are created).
        tile_size: ``(width, height)`` of each crop in pixels.
        border: width of the coloured border around each crop.
        gap: spacing between crops; the query is separated by three gaps.
        title: optional line of text at the top.

    Returns:
        The written path. Rows may have different numbers of matches.
    """
    rows = [r if isinstance(r, RankedRow) else RankedRow(*r) for r in rows]
    if not rows:
        raise ValueError("render_ranked_rows needs at least one row")
    for row in rows:
        for _, status in row.matches:
            if status not in STATUS_COLOURS or status == "query":
                raise ValueError(
                    f"unknown match status {status!r}; expected correct, wrong, junk or unknown"
                )
    font = ImageFont.load_default()
    tw, th = tile_size
    cell_w, cell_h = tw + 2 * border, th + 2 * border
    text_h = 12
    max_matches = max(len(r.matches) for r in rows)
    # Per row: label line, rank-number line, crops, score/"query" line, gap.
    row_h = 2 * text_h + cell_h + text_h + gap
    width = gap + cell_w + 3 * gap + max_matches * (cell_w + gap)
    top = (text_h + gap) if title else 0
    canvas = Image.new("RGB", (width, top + gap + len(rows) * row_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap // 2), title, fill=_TEXT, font=font)

    def put(path: str, status: str, x: int, y: int) -> None:
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=STATUS_COLOURS[status])
        canvas.paste(_load_tile(path, tile_size, greyed=status == "junk"), (x + border, y + border))

    y = top + gap
    for row in rows:
        if row.label:
            draw.text((gap, y), row.label, fill=_TEXT, font=font)
        tiles_y = y + 2 * text_h
        put(row.query, "query", gap, tiles_y)
        draw.text((gap, tiles_y + cell_h), "query", fill=_TEXT, font=font)
        x0 = gap + cell_w + 3 * gap
        for rank, (path, status) in enumerate(row.matches, start=1):
            x = x0 + (rank - 1) * (cell_w + gap)
            draw.text((x, y + text_h), str(rank), fill=_TEXT, font=font)
            put(path, status, x, tiles_y)
            if row.scores is not None and rank <= len(row.scores):
                score = f"{row.scores[rank - 1]:.3f}"
                draw.text((x, tiles_y + cell_h), score, fill=_TEXT, font=font)
        y += row_h
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    return out_png


def visualize_ranked_results(
    ranked: np.ndarray,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    out_dir: str | os.PathLike[str],
    *,
    distances: np.ndarray | None = None,
    topk: int = 10,
    max_queries: int | None = None,
    tile_size: tuple[int, int] = (64, 128),
) -> list[Path]:
    """Write one ranked-results picture per query.

    Args:
        ranked: ``[Q, >=topk]`` gallery indices, nearest first (``-1`` entries are skipped),
            e.g. from :meth:`crossreid.retrieval.FeatureIndex.search`.
        query, gallery: the records the rows and indices refer to.
        out_dir: folder for the pictures, named ``<query number>_<query file stem>.png``.
        distances: optional ``[Q, >=topk]`` distances printed under the crops.
        topk: matches drawn per query.
        max_queries: draw only the first queries (all by default).

    Returns:
        The written paths, in query order.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(query):
        raise ValueError(f"ranked must be [{len(query)}, k], got shape {ranked.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = len(query) if max_queries is None else min(len(query), int(max_queries))
    digits = max(4, len(str(count)))
    written = []
    for i in range(count):
        q = query[i]
        indices = [int(j) for j in ranked[i, :topk] if j >= 0]
        matches = [
            (gallery[j].path, match_status(q.pid, q.camid, gallery[j].pid, gallery[j].camid))
            for j in indices
        ]
        scores = None if distances is None else [float(d) for d in distances[i, : len(indices)]]
        label = f"query pid {q.pid} cam {q.camid}" if q.pid >= 0 else Path(q.path).name
        out = out_dir / f"{i:0{digits}d}_{Path(q.path).stem}.png"
        written.append(
            render_ranked_rows(
                [RankedRow(q.path, matches, label, scores)], out, tile_size=tile_size
            )
        )
    return written


def visualize_features(
    qf: np.ndarray,
    gf: np.ndarray,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    out_dir: str | os.PathLike[str],
    *,
    metric: str = "cosine",
    topk: int = 10,
    max_queries: int | None = None,
) -> list[Path]:
    """Rank the gallery for each query by ``metric`` (exact faiss search, the same order as
    :func:`crossreid.evaluation.pairwise_distance`) and write one picture per query with
    :func:`visualize_ranked_results`. ``topk`` is clamped to the gallery size."""
    count = len(query) if max_queries is None else min(len(query), int(max_queries))
    index = build_index(gf, metric)
    distances, ranked = index.search(np.asarray(qf)[:count], min(int(topk), index.ntotal))
    return visualize_ranked_results(
        ranked, list(query)[:count], gallery, out_dir, distances=distances, topk=topk
    )


def visualize_feature_arrays(
    arrays: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike[str],
    *,
    metric: str = "cosine",
    topk: int = 10,
) -> list[Path]:
    """:func:`visualize_features` for the arrays of a query/gallery features file (which must
    hold ``q_paths`` and ``g_paths``).

    Raises:
        EvaluationError: the arrays carry no image paths.
    """
    if "q_paths" not in arrays or "g_paths" not in arrays:
        raise EvaluationError("--visualize needs image paths: q_paths/g_paths are not in the file")
    query, gallery = (
        [ImageRecord(str(p), int(i), int(c)) for p, i, c in zip(*cols, strict=True)]
        for cols in (
            (arrays["q_paths"], arrays["q_pids"], arrays["q_camids"]),
            (arrays["g_paths"], arrays["g_pids"], arrays["g_camids"]),
        )
    )
    return visualize_features(
        arrays["qf"], arrays["gf"], query, gallery, out_dir, metric=metric, topk=topk
    )
