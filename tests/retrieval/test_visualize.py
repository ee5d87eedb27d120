"""Ranked-results pictures: layout, border colours, greyed junk, one file per query."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from crossreid.data.base import ImageRecord
from crossreid.retrieval import (
    RankedRow,
    match_status,
    render_ranked_rows,
    visualize_ranked_results,
)
from crossreid.retrieval.visualize import STATUS_COLOURS

TILE = (16, 32)  # width, height
BORDER = 3
GAP = 6
TEXT = 12


def _crop(path, colour) -> str:
    Image.new("RGB", (20, 40), colour).save(path)
    return str(path)


def _cell_origin(
    row: int, column: int, rows_above_title: int = 0, border: int = BORDER
) -> tuple[int, int]:
    """Top-left pixel of a crop's border (column 0: the query) in render_ranked_rows' layout."""
    cell_w, cell_h = TILE[0] + 2 * border, TILE[1] + 2 * border
    row_h = 2 * TEXT + cell_h + TEXT + GAP
    x = GAP if column == 0 else GAP + cell_w + 3 * GAP + (column - 1) * (cell_w + GAP)
    y = rows_above_title + GAP + row * row_h + 2 * TEXT
    return x, y


def test_match_status_follows_the_market_protocol() -> None:
    assert match_status(5, 0, 5, 1) == "correct"
    assert match_status(5, 0, 5, 0) == "junk"  # same person, same camera: discarded
    assert match_status(5, 0, 6, 1) == "wrong"
    assert match_status(5, 0, 6, 0) == "wrong"
    assert match_status(-1, -1, 5, 0) == "unknown"  # unlabelled query
    assert match_status(5, 0, -1, -1) == "unknown"  # unlabelled gallery crop


def test_borders_are_coloured_by_status_and_junk_is_greyed(tmp_path) -> None:
    query = _crop(tmp_path / "q.png", (10, 200, 30))
    red_crop = _crop(tmp_path / "g.png", (200, 40, 40))
    matches = [
        (red_crop, "correct"),
        (red_crop, "wrong"),
        (red_crop, "junk"),
        (red_crop, "unknown"),
    ]
    out = render_ranked_rows(
        [RankedRow(query, matches, "label", [0.1, 0.2, 0.3, 0.4]), (query, matches[:2])],
        tmp_path / "deep" / "ranked.png",
        tile_size=TILE,
        border=BORDER,
        gap=GAP,
    )
    image = np.asarray(Image.open(out).convert("RGB"))
    cell_w = TILE[0] + 2 * BORDER
    assert image.shape[1] == GAP + cell_w + 3 * GAP + 4 * (cell_w + GAP)
    assert image.shape[0] == GAP + 2 * (2 * TEXT + TILE[1] + 2 * BORDER + TEXT + GAP)
    for column, status in enumerate(["query", "correct", "wrong", "junk", "unknown"]):
        x, y = _cell_origin(0, column)
        assert tuple(image[y + 1, x + 1]) == STATUS_COLOURS[status]

    def inside(column: int) -> np.ndarray:
        x, y = _cell_origin(0, column)
        return image[y + BORDER + 10, x + BORDER + 5]

    assert tuple(inside(0)) == (10, 200, 30)  # the query crop itself
    assert tuple(inside(1)) == (200, 40, 40)
    junk = inside(3)
    assert junk[0] == junk[1] == junk[2]  # greyscale
    assert junk[0] > 120  # and washed out towards white
    # The second row has two matches, drawn at the same columns.
    x, y = _cell_origin(1, 2)
    assert tuple(image[y + 1, x + 1]) == STATUS_COLOURS["wrong"]


def test_a_title_shifts_rows_down_and_unreadable_crops_become_placeholders(
    tmp_path, caplog
) -> None:
    query = _crop(tmp_path / "q.png", (0, 0, 255))
    with caplog.at_level(logging.WARNING):
        out = render_ranked_rows(
            [(query, [(str(tmp_path / "missing.jpg"), "wrong")])],
            tmp_path / "t.png",
            tile_size=TILE,
            border=BORDER,
            gap=GAP,
            title="top-1",
        )
    assert "missing.jpg" in caplog.text
    image = np.asarray(Image.open(out).convert("RGB"))
    x, y = _cell_origin(0, 1, rows_above_title=TEXT + GAP)
    assert tuple(image[y + 1, x + 1]) == STATUS_COLOURS["wrong"]
    assert tuple(image[y + BORDER + 20, x + BORDER + 2]) == (200, 200, 200)


def test_bad_rows_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown match status 'maybe'"):
        render_ranked_rows([("q.jpg", [("g.jpg", "maybe")])], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one row"):
        render_ranked_rows([], tmp_path / "x.png")


def test_visualize_ranked_results_writes_one_picture_per_query(tmp_path) -> None:
    paths = [_crop(tmp_path / f"{i}.png", (i * 40, 0, 0)) for i in range(4)]
    gallery = [
        ImageRecord(paths[i], pid, cam)
        for i, (pid, cam) in enumerate([(1, 0), (1, 1), (2, 0), (2, 1)])
    ]
    query = [ImageRecord(paths[0], 1, 0), ImageRecord(paths[3], 2, 1), ImageRecord(paths[2], 7, 0)]
    ranked = np.array([[0, 1, 2], [3, 2, -1], [2, 0, 1]])
    written = visualize_ranked_results(
        ranked, query, gallery, tmp_path / "vis", topk=2, tile_size=TILE, max_queries=2
    )
    assert [p.name for p in written] == ["0000_0.png", "0001_3.png"]
    image = np.asarray(Image.open(written[0]).convert("RGB"))
    # Query 0 (pid 1, cam 0): gallery 0 is junk, gallery 1 is correct; rank 3 is not drawn.
    cell_w = TILE[0] + 2 * 4
    assert image.shape[1] == 6 + cell_w + 18 + 2 * (cell_w + 6)
    for column, status in [(1, "junk"), (2, "correct")]:
        x, y = _cell_origin(0, column, border=4)
        assert tuple(image[y + 1, x + 1]) == STATUS_COLOURS[status]
    # Query 1 (pid 2, cam 1): gallery 3 is junk, gallery 2 correct.
    image = np.asarray(Image.open(written[1]).convert("RGB"))
    x, y = _cell_origin(0, 2, border=4)
    assert tuple(image[y + 1, x + 1]) == STATUS_COLOURS["correct"]
    with pytest.raises(ValueError, match=r"ranked must be \[3, k\]"):
        visualize_ranked_results(ranked[:2], query, gallery, tmp_path / "vis")
