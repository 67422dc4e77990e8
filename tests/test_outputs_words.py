"""outputs/words.py: lines -> words with estimated boxes."""

from __future__ import annotations

import math

import pytest

from ppvl_batch.outputs.words import Word, char_width, split_words


def test_words_share_the_box_by_character_width() -> None:
    # "ab cdef": 7 characters; "ab" takes 2/7 of the width, the space 1/7, "cdef" 4/7
    words = split_words({"text": "ab cdef", "bbox": [0, 10, 70, 30], "quad": None, "confidence": 0.9})
    assert [w.text for w in words] == ["ab", "cdef"]
    assert words[0].bbox == pytest.approx((0, 10, 20, 30))
    assert words[1].bbox == pytest.approx((30, 10, 70, 30))
    assert all(w.quad is None and w.confidence == 0.9 for w in words)


def test_runs_of_whitespace_count_as_one_space_and_ends_are_trimmed() -> None:
    words = split_words({"text": "  a\t\tb \n", "bbox": [0, 0, 30, 10]})
    assert [(w.text, w.bbox) for w in words] == [("a", (0, 0, 10, 10)), ("b", (20, 0, 30, 10))]


def test_wide_characters_count_double_and_combining_marks_not_at_all() -> None:
    assert char_width("漢") == 2 and char_width("a") == 1 and char_width("\u0301") == 0
    # "漢字 ab": widths 4 + 1 + 2 = 7
    words = split_words({"text": "漢字 ab", "bbox": [0, 0, 70, 10]})
    assert words[0].bbox == pytest.approx((0, 0, 40, 10))
    assert words[1].bbox == pytest.approx((50, 0, 70, 10))
    # an accent written as a combining mark takes no width: "é" = "e" + U+0301
    accented = split_words({"text": "e\u0301 x", "bbox": [0, 0, 30, 10]})
    assert accented[0].text == "e\u0301" and accented[0].bbox == pytest.approx((0, 0, 10, 10))


def test_a_line_without_spaces_is_one_word_with_the_line_box() -> None:
    words = split_words({"text": "ΑλφαΒήτα", "bbox": [5, 6, 50, 20], "confidence": None})
    assert words == [Word("ΑλφαΒήτα", (5, 6, 50, 20), None, None)]


def test_empty_text_gives_no_words() -> None:
    assert split_words({"text": "   ", "bbox": [0, 0, 10, 10]}) == []
    assert split_words({"text": None, "bbox": [0, 0, 10, 10]}) == []


def test_an_axis_aligned_quad_splits_the_bbox() -> None:
    line = {"text": "a b", "bbox": [0, 0, 30, 10], "quad": [[0, 0], [30, 0], [30, 10], [0, 10]]}
    assert [w.bbox for w in split_words(line)] == [(0, 0, 10, 10), (20, 0, 30, 10)]
    assert all(w.quad is None for w in split_words(line))


def test_a_rotated_quad_is_shared_along_its_direction() -> None:
    # a 30 degree line of length 90 and height 10, starting at (100, 100)
    angle = math.radians(30)
    ux, uy = math.cos(angle), -math.sin(angle)  # along the line (up and to the right on the page)
    vx, vy = math.sin(angle), math.cos(angle)  # down across the line
    tl = (100.0, 100.0)
    tr = (tl[0] + 90 * ux, tl[1] + 90 * uy)
    br = (tr[0] + 10 * vx, tr[1] + 10 * vy)
    bl = (tl[0] + 10 * vx, tl[1] + 10 * vy)
    quad = [list(tl), list(tr), list(br), list(bl)]
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    line = {"text": "ab cd ef", "bbox": [min(xs), min(ys), max(xs), max(ys)], "quad": quad, "confidence": 0.5}
    words = split_words(line)
    assert [w.text for w in words] == ["ab", "cd", "ef"]
    # "cd" runs from 3/8 to 5/8 of the line along its top edge
    q = words[1].quad
    assert q is not None and len(q) == 4
    assert q[0] == pytest.approx((tl[0] + 90 * 3 / 8 * ux, tl[1] + 90 * 3 / 8 * uy))
    assert q[1] == pytest.approx((tl[0] + 90 * 5 / 8 * ux, tl[1] + 90 * 5 / 8 * uy))
    assert q[3] == pytest.approx((q[0][0] + 10 * vx, q[0][1] + 10 * vy))
    # the bbox is the bounds of the word's own quad, inside the line's bbox
    assert words[1].bbox == pytest.approx((min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q), max(p[1] for p in q)))
    for w in words:
        assert line["bbox"][0] - 1e-9 <= w.bbox[0] and w.bbox[2] <= line["bbox"][2] + 1e-9
    # words follow each other up the slope: each starts higher on the page than the one before
    assert words[0].bbox[3] > words[1].bbox[3] > words[2].bbox[3]


def test_a_line_with_only_a_quad_uses_its_bounds() -> None:
    line = {"text": "x y", "quad": [[0, 0], [30, 0], [30, 10], [0, 10]]}
    assert [w.bbox for w in split_words(line)] == [(0, 0, 10, 10), (20, 0, 30, 10)]
