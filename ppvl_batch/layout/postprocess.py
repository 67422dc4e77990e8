"""PaddleX's layout post-processing, which transformers' layout models do not do.

The detector (detector.py) turns the model's output into `Detection`s exactly as transformers'
`post_process_object_detection` does. The PaddleOCR-VL pipeline then applies these rules, in this
order (docs/layout.md says where each was read):

    1. round boxes to whole pixels          5. containment merge per label ("large" / "union")
    2. score threshold (per label or one)   6. sort by the model's reading order
    3. NMS, same / different label          7. clip to the page, drop empty boxes; order 1..n
    4. large-image filter                   8. filter_overlap_boxes (reference, tiny, overlaps)

Every number is a field of `LayoutRules`, defaulting to the pipeline's value for the model.
Pure Python + numpy: no torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .labels import SKIP_ORDER_LABELS

# Labels whose boxes swallow the boxes they contain (merge mode "large"); every other label is
# "union", which PaddleX treats as "do nothing".
LARGE_MERGE_LABELS = frozenset({"chart", "display_formula", "doc_title", "inline_formula", "paragraph_title"})

# PaddleOCR-VL v1 (PP-DocLayoutV2): per-label thresholds, 0.5 for every label not listed.
V2_THRESHOLDS: Mapping[str, float] = {
    "display_formula": 0.4, "doc_title": 0.4, "inline_formula": 0.4, "paragraph_title": 0.4,
    "text": 0.4, "vertical_text": 0.4, "seal": 0.45,
}
V2_DEFAULT_THRESHOLD = 0.5
V3_THRESHOLD = 0.3  # PaddleOCR-VL 1.5 and 1.6 (PP-DocLayoutV3): one threshold for every label
# PP-DocLayoutV4 (PaddleOCR-VL 1.8): V3's rules, for want of a public source that says otherwise
# (docs/layout.md, "PaddleX rules")
VERSIONS = ("v2", "v3", "v4")

Quad = tuple[tuple[float, float], ...]  # four corners, TL TR BR BL


@dataclass(frozen=True)
class Detection:
    """One decoded query: what transformers' post_process_object_detection returns per box.
    `box` is x0 y0 x1 y1 in page pixels, unclipped floats; `order` the model's reading-order rank
    (0-based; two labels of one query share it); `quad` the corners TL TR BR BL (PP-DocLayoutV4
    only), `box` their extent."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    order: int
    quad: Quad | None = None


@dataclass(frozen=True)
class LayoutBlock:
    """A kept layout block: bbox x0 y0 x1 y1 in whole page pixels (x1, y1 exclusive, as a crop
    `img[y0:y1, x0:x1]`); `order` 1..n in reading order, None for labels that take none; `quad`
    (PP-DocLayoutV4) the corners TL TR BR BL in whole page pixels inside the page, `bbox` their
    extent."""

    label: str
    score: float
    bbox: tuple[int, int, int, int]
    order: int | None
    quad: tuple[tuple[int, int], ...] | None = None


class PageLayout(list):
    """A page's detections or blocks: a list, plus the page's `warp_params` (roll, quadrant
    confidence, shear, kx, ky) when the model has PP-DocLayoutV4's page-geometry head, else None."""

    def __init__(self, items: Iterable = (), warp_params: tuple[float, ...] | None = None) -> None:
        super().__init__(items)
        self.warp_params = warp_params


@dataclass(frozen=True)
class LayoutRules:
    """The pipeline's post-processing settings. `thresholds` maps a label to its threshold;
    labels not in it use `default_threshold` (a box is kept when score > threshold)."""

    thresholds: Mapping[str, float] = field(default_factory=dict)
    default_threshold: float = V3_THRESHOLD
    nms: bool = True
    iou_same: float = 0.6  # NMS IoU for two boxes of one label
    iou_diff: float = 0.98  # ... and of two labels
    large_image_landscape: float = 0.82  # an `image` box above this share of the page is dropped
    large_image_portrait: float = 0.93
    large_merge_labels: frozenset[str] = LARGE_MERGE_LABELS
    containment: float = 0.9  # share of a box inside a "large" box that makes it go
    skip_order_labels: frozenset[str] = SKIP_ORDER_LABELS
    drop_labels: frozenset[str] = frozenset({"reference"})
    min_side: int = 4  # boxes narrower or lower than this (pixels) are dropped
    overlap: float = 0.7  # intersection / smaller area above which the smaller box goes

    @classmethod
    def for_version(cls, version: str, **overrides: object) -> LayoutRules:
        """The pipeline's settings for PP-DocLayout "v2" (PaddleOCR-VL v1), "v3" (1.5, 1.6) or "v4"
        (1.8: V3's, docs/layout.md)."""
        if version == "v2":
            base = cls(thresholds=dict(V2_THRESHOLDS), default_threshold=V2_DEFAULT_THRESHOLD)
        elif version in ("v3", "v4"):
            base = cls(thresholds={}, default_threshold=V3_THRESHOLD)
        else:
            raise ValueError(f"unknown layout model version {version!r} (expected one of {', '.join(VERSIONS)})")
        return replace(base, **overrides)  # type: ignore[arg-type]

    def threshold(self, label: str) -> float:
        return self.thresholds.get(label, self.default_threshold)

    def settings(self) -> dict[str, object]:
        """Every field as JSON values (sets sorted), for a checkpoint key."""
        return {
            name: sorted(value) if isinstance(value, frozenset)
            else dict(sorted(value.items())) if isinstance(value, Mapping)
            else value
            for name, value in ((f.name, getattr(self, f.name)) for f in fields(self))
        }

    def min_threshold(self) -> float:
        """The lowest threshold of any label: decode at this, then `apply` filters per label."""
        return min([self.default_threshold, *self.thresholds.values()])


def _rounded(d: Detection) -> Detection:
    # numpy rounds halves to even, as PaddleX's np.round does. Rounding is monotone, so the
    # rounded quad's extent is the rounded box.
    quad = None if d.quad is None else tuple(
        (float(x), float(y)) for x, y in np.round(np.asarray(d.quad, dtype=np.float64)))
    x0, y0, x1, y1 = (float(v) for v in np.round(np.asarray(d.box, dtype=np.float64)))
    return replace(d, box=(x0, y0, x1, y1), quad=quad)


def above_threshold(detections: Iterable[Detection], rules: LayoutRules) -> list[Detection]:
    # compared in float32, as numpy compares PaddleX's float32 scores with a Python threshold
    return [d for d in detections if np.float32(d.score) > np.float32(rules.threshold(d.label))]


def _iou_plus_one(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU with PaddleX's +1 pixel convention: a box from x0 to x1 is x1 - x0 + 1 pixels wide."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def nms(detections: list[Detection], rules: LayoutRules) -> list[Detection]:
    """Greedy NMS by descending score; a box goes when its IoU with a kept box reaches
    iou_same (same label) or iou_diff (different labels). Returns the kept boxes by score."""
    # np.argsort(...)[::-1]: PaddleX's order, ties included
    pending = list(np.argsort(np.array([d.score for d in detections], dtype=np.float32))[::-1])
    kept: list[Detection] = []
    while pending:
        best = detections[pending.pop(0)]
        kept.append(best)
        pending = [
            i for i in pending
            if _iou_plus_one(best.box, detections[i].box)
            < (rules.iou_same if detections[i].label == best.label else rules.iou_diff)
        ]
    return kept


def drop_large_images(detections: list[Detection], width: int, height: int, rules: LayoutRules) -> list[Detection]:
    """Drop `image` boxes covering more than 0.82 (landscape page) / 0.93 (otherwise) of the page,
    measured after clipping to it; never all boxes (which also covers PaddleX's "only with two
    boxes or more")."""
    share = rules.large_image_landscape if width > height else rules.large_image_portrait
    limit = share * (width * height)  # PaddleX's float expression

    def small_enough(d: Detection) -> bool:
        x0, y0, x1, y1 = max(0.0, d.box[0]), max(0.0, d.box[1]), min(width, d.box[2]), min(height, d.box[3])
        return (x1 - x0) * (y1 - y0) <= limit

    kept = [d for d in detections if d.label != "image" or small_enough(d)]
    return kept or detections


def _inside_share(inner: tuple[float, ...], outer: tuple[float, ...]) -> float:
    """Share of `inner`'s area (no +1) that lies inside `outer`; 0 for an empty inner box."""
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    if area <= 0:
        return 0.0
    iw = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    ih = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    return iw * ih / area


def merge_contained(detections: list[Detection], rules: LayoutRules) -> list[Detection]:
    """Merge mode "large": any box (of any label) at least `containment` inside a box whose label
    is in large_merge_labels goes. Decided on the input list at once, so two such boxes that
    contain each other both go, as in PaddleX."""
    return [
        d for i, d in enumerate(detections)
        if not any(
            j != i and o.label in rules.large_merge_labels and _inside_share(d.box, o.box) >= rules.containment
            for j, o in enumerate(detections)
        )
    ]


def sort_by_order(detections: list[Detection], version: str) -> list[Detection]:
    """The model's reading order. V2 (PaddleX's 8-column output): by order, then by descending
    score; V3 (7 columns) and V4: by order alone (stable)."""
    if not detections:
        return []
    order = np.array([d.order for d in detections])
    if version == "v2":
        idx = np.lexsort((-np.array([d.score for d in detections]), order))
    else:
        idx = np.argsort(order, kind="stable")
    return [detections[i] for i in idx]


def to_blocks(detections: list[Detection], width: int, height: int, rules: LayoutRules) -> list[LayoutBlock]:
    """Clip to the page and truncate to int, drop empty boxes, then number the rest 1..n in list
    order, skipping the labels that take no order."""
    blocks = []
    next_order = 1
    for d in detections:
        x0, y0 = int(max(0.0, d.box[0])), int(max(0.0, d.box[1]))
        x1, y1 = int(min(float(width), d.box[2])), int(min(float(height), d.box[3]))
        if x1 <= x0 or y1 <= y0:
            continue
        order = None
        if d.label not in rules.skip_order_labels:
            order, next_order = next_order, next_order + 1
        quad = None
        if d.quad is not None:  # clipped as the box is, so the quad's extent is the bbox
            quad = tuple((int(min(max(x, 0.0), float(width))), int(min(max(y, 0.0), float(height)))) for x, y in d.quad)
        blocks.append(LayoutBlock(d.label, d.score, (x0, y0, x1, y1), order, quad))
    return blocks


def _overlap_of_smaller(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min(abs((a[2] - a[0]) * (a[3] - a[1])), abs((b[2] - b[0]) * (b[3] - b[1])))
    return iw * ih / smaller if smaller else 0.0


def filter_overlaps(blocks: list[LayoutBlock], rules: LayoutRules) -> list[LayoutBlock]:
    """PaddleOCR-VL's filter_overlap_boxes: drop `reference` blocks and blocks with a side under
    min_side pixels; of two blocks overlapping more than `overlap` of the smaller one, the smaller
    goes (the first on equal areas keeps), except an `image` against another label, where both
    stay. Reading-order numbers are kept as they were (PaddleX does not renumber)."""
    boxes = [b for b in blocks if b.label not in rules.drop_labels]
    dropped: set[int] = set()
    for i, a in enumerate(boxes):
        if a.bbox[2] - a.bbox[0] < rules.min_side or a.bbox[3] - a.bbox[1] < rules.min_side:
            dropped.add(i)
        # PaddleX compares i with the later boxes even in the pass that just dropped i: it skips
        # only pairs already dropped, so this loop keeps its shape.
        for j in range(i + 1, len(boxes)):
            if i in dropped or j in dropped:
                continue
            b = boxes[j]
            if _overlap_of_smaller(a.bbox, b.bbox) <= rules.overlap:
                continue
            if "image" in (a.label, b.label) and a.label != b.label:
                continue
            area_a = abs((a.bbox[2] - a.bbox[0]) * (a.bbox[3] - a.bbox[1]))
            area_b = abs((b.bbox[2] - b.bbox[0]) * (b.bbox[3] - b.bbox[1]))
            dropped.add(j if area_a >= area_b else i)
    return [b for i, b in enumerate(boxes) if i not in dropped]


def apply_rules(
    detections: Iterable[Detection], width: int, height: int, version: str, rules: LayoutRules | None = None
) -> PageLayout:
    """All the pipeline's rules, in the pipeline's order, on one page of `width` x `height`; the
    page's warp_params, if `detections` has them, go along."""
    rules = rules or LayoutRules.for_version(version)
    kept = above_threshold((_rounded(d) for d in detections), rules)
    if rules.nms:
        kept = nms(kept, rules)
    kept = drop_large_images(kept, width, height, rules)
    kept = merge_contained(kept, rules)
    kept = sort_by_order(kept, version)
    blocks = filter_overlaps(to_blocks(kept, width, height, rules), rules)
    return PageLayout(blocks, getattr(detections, "warp_params", None))
