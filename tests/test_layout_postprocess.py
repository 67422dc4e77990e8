"""PaddleX's layout rules (ppvl_batch/layout/postprocess.py) on hand-made boxes: which survive,
in which order, with which reading-order numbers. Each case sits on a rule's boundary so that an
off-by-one (the +1 pixel IoU, > against >=, clip before measuring) would change the answer."""

from __future__ import annotations

import numpy as np
import pytest

from ppvl_batch.layout.postprocess import (
    Detection,
    LayoutBlock,
    LayoutRules,
    above_threshold,
    apply_rules,
    drop_large_images,
    filter_overlaps,
    merge_contained,
    nms,
    sort_by_order,
    to_blocks,
)

V2 = LayoutRules.for_version("v2")
V3 = LayoutRules.for_version("v3")


def det(label: str, box, score: float = 0.9, order: int = 0) -> Detection:
    return Detection(label, score, tuple(float(v) for v in box), order)


def block(label: str, bbox, order: int | None = None, score: float = 0.9) -> LayoutBlock:
    return LayoutBlock(label, score, tuple(bbox), order)


def test_pipeline_defaults():
    assert V2.threshold("text") == 0.4 and V2.threshold("seal") == 0.45 and V2.threshold("table") == 0.5
    assert V2.min_threshold() == 0.4
    assert V3.threshold("table") == V3.threshold("text") == V3.min_threshold() == 0.3
    assert (V2.iou_same, V2.iou_diff, V2.min_side, V2.overlap, V2.containment) == (0.6, 0.98, 4, 0.7, 0.9)
    assert V2.large_merge_labels == {"chart", "display_formula", "doc_title", "inline_formula", "paragraph_title"}
    assert LayoutRules.for_version("v4") == V3  # PP-DocLayoutV4: V3's rules (docs/layout.md)
    with pytest.raises(ValueError, match="v5"):
        LayoutRules.for_version("v5")


def test_threshold_is_strict_per_label_and_in_float32():
    boxes = [
        det("text", [0, 0, 9, 9], 0.41), det("text", [0, 0, 9, 9], 0.4),
        det("table", [0, 0, 9, 9], 0.45), det("seal", [0, 0, 9, 9], 0.46),
        det("doc_title", [0, 0, 9, 9], 0.400001),
    ]
    assert [(d.label, d.score) for d in above_threshold(boxes, V2)] == [
        ("text", 0.41), ("seal", 0.46), ("doc_title", 0.400001)]
    # a float32 score equal to float32(0.3) is not above 0.3, although as float64 it is (0.3000000119)
    at = float(np.float32(0.3))
    assert at > 0.3
    assert above_threshold([det("text", [0, 0, 9, 9], at)], V3) == []
    assert above_threshold([det("text", [0, 0, 9, 9], float(np.nextafter(np.float32(0.3), 1)))], V3) != []
    assert above_threshold(boxes, LayoutRules.for_version("v2", thresholds={}, default_threshold=0.455)) == [boxes[3]]


def test_nms_same_label_uses_the_plus_one_pixel_iou():
    # with +1 pixels: inter 10 x 6 = 60, union 100 + 60 - 60 -> IoU 0.6 exactly: the second goes
    # (without the +1 it would be 45 / 81 = 0.56 and stay)
    a, b = det("text", [0, 0, 9, 9], 0.9), det("text", [0, 0, 9, 5], 0.8)
    assert nms([b, a], V2) == [a]
    # one pixel less overlap: 10 x 5 / 100 = 0.5 -> both stay, by descending score
    c = det("text", [0, 0, 9, 4], 0.95)
    assert nms([a, c], V2) == [c, a]


def test_nms_different_labels_only_near_duplicates():
    # +1 IoU = 100 x 98 / (100 x 100) = 0.98: the lower score goes; 0.97 stays
    a, b = det("text", [0, 0, 99, 99], 0.7), det("footnote", [0, 0, 99, 97], 0.8)
    assert nms([a, b], V2) == [b]
    c = det("footnote", [0, 0, 99, 96], 0.8)
    assert nms([a, c], V2) == [c, a]
    # a same-label pair at IoU 0.97 is well above 0.6
    assert nms([a, det("text", [0, 0, 99, 96], 0.8)], V2) == [det("text", [0, 0, 99, 96], 0.8)]


def test_nms_is_greedy_from_the_best_score():
    # b overlaps a and c; a is best and removes b; c, which only b overlapped, survives
    a, b, c = det("text", [0, 0, 99, 99], 0.9), det("text", [0, 20, 99, 119], 0.8), det("text", [0, 40, 99, 139], 0.7)
    assert nms([c, b, a], V2) == [a, c]


def test_large_image_filter_by_page_shape_after_clipping():
    text = det("text", [0, 0, 10, 10])
    # portrait 100 x 200 -> limit 0.93 x 20000 = 18600; the box is clipped to the page first
    kept = det("image", [-50, 0, 100, 186])  # 100 x 186 = 18600: kept (<=)
    gone = det("image", [0, -20, 100, 187])  # 100 x 187 = 18700
    assert drop_large_images([text, kept, gone], 100, 200, V2) == [text, kept]
    # landscape 200 x 100 -> 0.82: 164 x 100 stays, 165 x 100 goes
    assert drop_large_images([text, det("image", [0, 0, 164, 100]), det("image", [0, 0, 165, 100])], 200, 100, V2) == [
        text, det("image", [0, 0, 164, 100])]
    # a square page counts as portrait
    assert drop_large_images([text, det("image", [0, 0, 100, 93])], 100, 100, V2) == [text, det("image", [0, 0, 100, 93])]
    # not with a single box, and never every box
    assert drop_large_images([gone], 100, 200, V2) == [gone]
    assert drop_large_images([gone, gone], 100, 200, V2) == [gone, gone]
    # other labels may cover the page
    assert drop_large_images([text, det("table", [0, 0, 100, 200])], 100, 200, V2) == [text, det("table", [0, 0, 100, 200])]


def test_containment_merge_large_and_union():
    title = det("paragraph_title", [0, 0, 100, 20])
    inside = det("text", [0, 0, 100, 18])  # fully inside a "large" label's box: goes
    edge = det("text", [0, 2, 100, 22])  # 18 / 20 = 0.9 inside: goes (>=)
    out = det("text", [0, 3, 100, 23])  # 0.85 inside: stays
    assert merge_contained([title, inside, edge, out], V2) == [title, out]
    # "union" labels (text, table...) swallow nothing
    big_text = det("text", [0, 0, 500, 500])
    table = det("table", [0, 0, 400, 400])
    assert merge_contained([big_text, table, det("paragraph_title", [10, 10, 50, 20])], V2) == [
        big_text, table, det("paragraph_title", [10, 10, 50, 20])]
    # a formula inside a formula (both "large") goes; an empty box is never "inside"
    formula, small = det("display_formula", [0, 0, 100, 50]), det("inline_formula", [10, 10, 20, 20])
    assert merge_contained([formula, small, det("text", [5, 5, 5, 9])], V2) == [formula, det("text", [5, 5, 5, 9])]
    # two "large" boxes each >= 0.9 inside the other both go (decided at once, as PaddleX does)
    assert merge_contained([det("chart", [0, 0, 100, 100]), det("doc_title", [0, 0, 100, 95])], V2) == []


def test_sort_by_reading_order():
    a, b, c = det("text", [0, 0, 1, 1], 0.5, order=2), det("footnote", [0, 0, 1, 1], 0.8, order=2), det("text", [0, 0, 1, 1], 0.9, order=0)
    # V2: by order, then higher score first; V3: by order, ties as they came
    assert sort_by_order([a, b, c], "v2") == [c, b, a]
    assert sort_by_order([a, b, c], "v3") == [c, a, b]
    assert sort_by_order([], "v3") == []


def test_blocks_are_clipped_truncated_and_numbered():
    dets = [
        det("doc_title", [-5, -3, 50.7, 60]),
        det("table", [10, 70, 150, 120]),  # no order number
        det("text", [120, 0, 140, 10]),  # starts past the 100 px page: dropped
        det("text", [0, 130, 99.9, 140]),
        det("header", [0, 0, 100, 0]),  # empty
        det("image", [0, 150, 100, 250]),  # clipped to 200
    ]
    assert to_blocks(dets, 100, 200, V2) == [
        block("doc_title", (0, 0, 50, 60), 1),
        block("table", (10, 70, 100, 120), None),
        block("text", (0, 130, 99, 140), 2),
        block("image", (0, 150, 100, 200), None),
    ]


def test_filter_overlaps():
    blocks = [
        block("text", (0, 0, 100, 100), 1),
        block("reference", (0, 200, 100, 300), 2),  # always dropped
        block("text", (0, 0, 100, 71), 3),  # 71% of it inside the first: the smaller goes
        block("text", (0, 0, 100, 70), 4),  # as entirely inside: goes too
        block("image", (10, 10, 90, 90), None),  # image against text: both stay
        block("number", (500, 500, 503, 520), 5),  # 3 px wide
        block("image", (200, 0, 300, 100), None),
        block("image", (200, 0, 300, 80), None),  # image against image: the smaller goes
        block("text", (400, 0, 500, 100), 6),
        block("text", (400, 71, 500, 200), 7),  # overlap 29 / 100 of the smaller: stays
        block("table", (600, 0, 700, 100), None),
        block("text", (600, 0, 700, 100), 8),  # equal areas: the later one goes
    ]
    kept = filter_overlaps(blocks, V2)
    assert kept == [blocks[0], blocks[4], blocks[6], blocks[8], blocks[9], blocks[10]]
    # numbers stay as they were (PaddleX does not renumber after this filter)
    assert [b.order for b in kept] == [1, None, None, 6, 7, None]


def test_filter_overlaps_boundary_and_tiny_boxes():
    big, smaller = block("text", (0, 0, 100, 100), 1), block("text", (0, 30, 100, 130), 2)
    assert filter_overlaps([big, smaller], V2) == [big, smaller]  # exactly 0.7: not more
    assert filter_overlaps([big, block("text", (0, 29, 100, 129), 2)], V2) == [big]
    # a 4 px box stays, a 3 px one goes, even alone
    assert filter_overlaps([block("number", (0, 0, 4, 4), 1)], V2) == [block("number", (0, 0, 4, 4), 1)]
    assert filter_overlaps([block("number", (0, 0, 3, 40), 1)], V2) == []
    # a too-narrow box still removes a box before it that lies 75% inside it: PaddleX checks a
    # box's size only when its own row of comparisons starts; after it, it is already gone
    narrow, small = block("text", (0, 0, 3, 100), 1), block("text", (0, 0, 4, 10), 2)
    assert filter_overlaps([small, narrow], V2) == []
    assert filter_overlaps([narrow, small], V2) == [small]


def test_whole_page():
    """All rules in order on a two-column page as the model might return it (V2)."""
    w, h = 1000, 1400
    dets = [
        det("doc_title", [100.4, 50.5, 900.6, 120], 0.95, order=0),
        det("text", [100, 150, 480, 700], 0.97, order=1),
        det("text", [100, 150, 480, 710], 0.55, order=2),  # NMS: IoU > 0.6 with the one above
        det("inline_formula", [200, 300, 260, 320], 0.9, order=3),  # inside text: overlap filter
        det("text", [520, 150, 900, 700], 0.96, order=4),
        det("paragraph_title", [520, 720, 900, 760], 0.9, order=5),
        det("text", [525, 722, 895, 758], 0.45, order=6),  # inside the paragraph_title: merge
        det("table", [100, 800, 900, 1200], 0.93, order=7),
        det("figure_title", [100, 1210, 900, 1240], 0.35, order=8),  # below 0.5
        det("footnote", [100, 1300, 900, 1350], 0.82, order=9),
        det("text", [100, 1300, 900, 1350], 0.51, order=9),  # same query, other label: NMS (IoU 1)
        det("image", [0, 0, 1000, 1400], 0.6, order=10),  # whole page image: large-image filter
        det("reference", [100, 1360, 900, 1390], 0.9, order=11),
        det("number", [950, 1380, 960, 1395], 0.9, order=12),
    ]
    assert apply_rules(dets, w, h, "v2") == [
        block("doc_title", (100, 50, 901, 120), 1, 0.95),  # 50.5 rounds to even, 900.6 up
        block("text", (100, 150, 480, 700), 2, 0.97),
        block("text", (520, 150, 900, 700), 4, 0.96),
        block("paragraph_title", (520, 720, 900, 760), 5, 0.9),
        block("table", (100, 800, 900, 1200), None, 0.93),
        block("footnote", (100, 1300, 900, 1350), None, 0.82),
        block("number", (950, 1380, 960, 1395), 7, 0.9),
    ]
    # without NMS the overlap filter decides the duplicates: the larger text box (lower score)
    # stays, and the numbers were given before it ran
    no_nms = apply_rules(dets, w, h, "v2", LayoutRules.for_version("v2", nms=False))
    assert [(b.label, b.bbox, b.order) for b in no_nms] == [
        ("doc_title", (100, 50, 901, 120), 1), ("text", (100, 150, 480, 710), 3),
        ("text", (520, 150, 900, 700), 5), ("paragraph_title", (520, 720, 900, 760), 6),
        ("table", (100, 800, 900, 1200), None), ("footnote", (100, 1300, 900, 1350), None),
        ("number", (950, 1380, 960, 1395), 9)]


def test_v3_one_threshold():
    dets = [det("figure_title", [0, 0, 50, 10], 0.35, order=1), det("text", [0, 20, 50, 40], 0.31, order=0),
            det("seal", [60, 0, 90, 30], 0.29, order=2)]
    assert apply_rules(dets, 100, 100, "v3") == [
        block("text", (0, 20, 50, 40), 1, 0.31), block("figure_title", (0, 0, 50, 10), None, 0.35)]
    assert apply_rules([], 100, 100, "v3") == []
