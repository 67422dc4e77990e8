"""PP-DocLayoutV4: our preprocessing, quads and reading order against transformers' own
`PPDocLayoutV4ImageProcessor` (transformers 5.25), on tiny random-weight V4 models of the real
class, with and without the page-geometry (warp) head, with heads crafted for the degenerate
cases: nothing above threshold, one query under two labels, order cycles with tied weights, no
successor edges at all, tied relative votes.

The processor cannot be instantiated here (it needs torchvision), but its post-processing uses
torch, numpy and scipy only: the reference imports the real module with torchvision stubbed and
calls its methods on an instance made without __init__. scipy is the reference's (our port does
not need it).
"""

from __future__ import annotations

import copy
import importlib
import importlib.machinery
import sys
import types

import numpy as np
import pytest
import tiny_layout
import torch
import torch.nn.functional as F
from makedocs import detector_pages
from PIL import Image

from ppvl_batch.layout.detector import LayoutDetector, Preprocessing
from ppvl_batch.layout.labels import LABELS
from ppvl_batch.layout.postprocess import Detection, LayoutRules, apply_rules
from ppvl_batch.layout.quads import _first_cycle, reading_order


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference():
    """An instance of transformers' PPDocLayoutV4ImageProcessor made without __init__ (its
    post-processing reads nothing from `self` but its own methods)."""
    import transformers.image_processing_backends  # noqa: F401  (decides torchvision's absence unstubbed)

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.v2.functional"]
    stubbed = importlib.util.find_spec("torchvision") is None
    for name in names if stubbed else []:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub
    try:
        module = importlib.import_module("transformers.models.pp_doclayout_v4.image_processing_pp_doclayout_v4")
    finally:
        for name in names if stubbed else []:
            del sys.modules[name]
    return object.__new__(module.PPDocLayoutV4ImageProcessor)


def reference_pixels(images: list[Image.Image], side: int) -> torch.Tensor:
    """PPDocLayoutV4ImageProcessor._preprocess on the CPU for RGB uint8 pages: the uint8 tensor
    cast to float, torchvision's resize (bicubic, antialias=False: interpolate on floats, nothing
    else; same size: unchanged), rounded and clamped back to uint8, rescaled (`image * factor`),
    then normalized alone (tvF.normalize: sub mean, div std) with mean 0, std 1."""
    out = []
    for image in images:
        t = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()[None].float()
        if t.shape[-2:] != (side, side):
            t = F.interpolate(t, size=[side, side], mode="bicubic", align_corners=False, antialias=False)
        t = t.round().clamp(0, 255).to(torch.uint8).to(torch.float32) * (1 / 255)
        out.append(t[0].sub(torch.zeros(3)[:, None, None]).div(torch.ones(3)[:, None, None]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, LayoutDetector]:
    root = tmp_path_factory.mktemp("layout-v4")
    return {
        name: LayoutDetector.load(tiny_layout.build_layout_checkpoint(root / name, version="v4", seed=5, warp=name == "warp"))
        for name in ("plain", "warp")
    }


def crafted(detector: LayoutDetector, case: str) -> LayoutDetector:
    """A copy whose heads force a case. sigmoid(+-200) is exactly 1 or 0 in float32, so corner
    offsets saturate to +-0.5 around each query's centre."""
    model = copy.deepcopy(detector.model)
    decoder = model.model.decoder
    classes, quads = decoder.class_embed[-1], decoder.bbox_embed[-1].layers[-1]
    successor = decoder.successor_order_head.global_pointer
    relative = decoder.relative_order_head.global_pointer
    text, footnote = LABELS.index("text"), LABELS.index("footnote")
    with torch.no_grad():
        if case != "random":
            classes.bias[text] = 4.0
        if case == "nothing":
            classes.bias.fill_(-200.0)
        elif case == "two_labels":  # footnote's row is text's, every other label far below
            classes.bias.fill_(-200.0)
            classes.bias[[text, footnote]] = 0.0
            classes.weight[footnote] = classes.weight[text]
        elif case in ("page_quads", "zero_size"):  # TL TR BR BL at (-,-) (+,-) (+,+) (-,+), or all at (+,+)
            signs = [-1, -1, 1, -1, 1, 1, -1, 1] if case == "page_quads" else [1] * 8
            quads.weight[2:].zero_()
            quads.bias[2:] = 200.0 * torch.tensor(signs, dtype=torch.float32)
        elif case in ("successor_all", "successor_none"):  # every pair an edge of one weight, or none
            for proj, sign in ((successor.q_proj, 1.0), (successor.k_proj, 1.0 if case == "successor_all" else -1.0)):
                proj.weight.zero_()
                proj.bias.fill_(sign)
        elif case == "relative_flat":  # every relative vote 0.5: the Borda count ties everywhere
            for proj in (relative.q_proj, relative.k_proj):
                proj.weight.zero_()
                proj.bias.fill_(1.0)
            decoder.relative_order_head.s2r_fusion.closure_weight.zero_()
    return LayoutDetector(model, "v4", detector.preprocessing)


def reference_detections(detector: LayoutDetector, ref, images, threshold: float):
    """transformers: forward on its own preprocessing, then its post_process_object_detection."""
    with torch.inference_mode():
        out = detector.model(pixel_values=reference_pixels(images, detector.preprocessing.height))
    results = ref.post_process_object_detection(out, threshold=threshold, target_sizes=[(im.height, im.width) for im in images])
    pages_ = []
    for r in results:
        found = [
            Detection(LABELS[lab], s, tuple(b), o, tuple((x, y) for x, y in q))
            for s, lab, b, o, q in zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist(),
                                       r["order_seq"].tolist(), r["polygon_points"].tolist())
        ]
        pages_.append((found, tuple(r["warp_params"].tolist()) if "warp_params" in r else None))
    return pages_, out


def test_preprocessing_equals_reference():
    images = detector_pages() + [Image.new("RGB", (800, 800), (12, 200, 77))]
    pre = Preprocessing.from_config({}, "defaults", rescale_first=True)
    got = torch.stack([pre(im) for im in images])
    assert got.dtype == torch.float32 and torch.equal(got, reference_pixels(images, 800))
    # an 800 x 800 page is only rescaled (a product with 1/255, not a division by 255)
    assert torch.equal(got[3], torch.from_numpy(np.array(images[3])).permute(2, 0, 1).float() * (1 / 255))
    # ... and V4's order (round to uint8, then rescale) is not V2/V3's on a noisy page
    assert not torch.equal(got[2], Preprocessing.from_config({}, "defaults")(images[2]))


def test_load_reads_v4(detectors):
    detector = detectors["plain"]
    assert detector.version == "v4" and detector.preprocessing.rescale_first == pytest.approx(1 / 255)
    assert detector.preprocess(detector_pages()).shape == (3, 3, 128, 128)
    assert detectors["warp"].model.config.deform_pred and not detector.model.config.deform_pred


def test_reading_order_equals_transformers_on_random_and_tied_logits(reference):
    """Cycle removal (first DFS cycle, weakest edge, first on ties), components, topological
    sort with the Borda tie-break, components by mean vote: random logits, small integers (ties
    everywhere), all edges equal, no edges, sizes 0 to 24."""
    rng = np.random.default_rng(0)
    cycles = 0
    for trial in range(240):
        n = int(rng.integers(0, 25))
        kind = trial % 4
        if kind == 1:
            rel, suc = (rng.integers(-2, 3, size=(n, n)).astype(np.float32) for _ in range(2))
        elif kind == 2:
            rel, suc = np.zeros((n, n), np.float32), np.full((n, n), float(trial % 3) - 1.0, np.float32)
        else:
            rel, suc = (rng.normal(size=(n, n)).astype(np.float32) - (1.5 * (kind == 3) if i else 0) for i in range(2))
        rel = rel - rel.T
        np.fill_diagonal(suc, -1e4)
        edges = {(i, j): float(suc[i, j]) for i in range(n) for j in range(n) if i != j and suc[i, j] > 0}
        cycles += _first_cycle(n, edges) is not None
        assert np.array_equal(reading_order(rel, suc), reference._decode_reading_order(rel, suc)), (trial, n)
    assert cycles > 100  # the cycle removal is what most cases exercise


CASES = ["random", "confident", "nothing", "two_labels", "page_quads", "zero_size", "successor_all", "successor_none",
         "relative_flat"]


@pytest.mark.parametrize("head", ["plain", "warp"])
@pytest.mark.parametrize("case", CASES)
def test_detection_equals_transformers(head, case, detectors, reference):
    detector = crafted(detectors[head], case)
    images = detector_pages()
    threshold = 0.0 if case in ("random", "two_labels") else LayoutRules.for_version("v4").min_threshold()
    expected, out = reference_detections(detector, reference, images, threshold)
    got = detector.detect(images, threshold, batch_size=len(images))  # one forward, as the reference's
    assert [list(page) for page in got] == [found for found, _ in expected]
    assert [page.warp_params for page in got] == [warp for _, warp in expected]
    assert (head == "warp") == (got[0].warp_params is not None)
    # one page per forward pass (the CPU's default): the same as transformers run that way
    assert [list(p) for p in detector.detect(images, threshold, batch_size=1)] == [
        reference_detections(detector, reference, [im], threshold)[0][0][0] for im in images]

    if case == "nothing":
        assert all(page == [] for page in got)
        return
    for image, page in zip(images, got):
        assert page and [d.order for d in page] == sorted(d.order for d in page)
        for d in page:
            xs, ys = [x for x, _ in d.quad], [y for _, y in d.quad]
            assert d.box == (min(xs), min(ys), max(xs), max(ys))
            if case == "page_quads":  # TL TR BR BL of a page-sized rectangle around the query's centre
                (x0, y0), (x1, _), (_, y1), _ = d.quad
                assert d.quad == ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
                assert x1 - x0 == pytest.approx(image.width, abs=1e-3) and y1 - y0 == pytest.approx(image.height, abs=1e-3)
            if case == "zero_size":
                assert len(set(d.quad)) == 1
    if case == "successor_all":  # every pair both ways, all of one weight: cycles everywhere, ties at each
        suc = out.successor_order_logits[0]
        off_diagonal = suc[~torch.eye(len(suc), dtype=torch.bool)]
        assert (off_diagonal > 0).all() and (off_diagonal == off_diagonal[0]).all()
    if case == "two_labels":
        by_rank: dict = {}
        for d in got[0]:
            by_rank.setdefault(d.order, []).append(d)
        twins = [g for g in by_rank.values() if len(g) == 2]
        assert twins and all(sorted(d.label for d in g) == ["footnote", "text"] and g[0].quad == g[1].quad for g in twins)
    if case == "zero_size":  # nothing survives the clip-and-drop-empty rule
        assert all(apply_rules(page, *im.size, "v4") == [] for im, page in zip(images, got))


def test_rules_keep_the_quad_rounded_and_clipped_with_the_bbox_its_extent(detectors):
    detector = crafted(detectors["warp"], "page_quads")
    images = detector_pages()
    blocks = detector.blocks(images)
    assert any(blocks)
    for image, page in zip(images, blocks):
        assert page.warp_params is not None and len(page.warp_params) == 5
        for b in page:
            xs, ys = [x for x, _ in b.quad], [y for _, y in b.quad]
            assert all(isinstance(v, int) for v in xs + ys)
            assert b.bbox == (min(xs), min(ys), max(xs), max(ys))
            assert min(xs) >= 0 and max(xs) <= image.width and min(ys) >= 0 and max(ys) <= image.height
    # by hand: a rotated quad reaching past the page
    d = Detection("text", 0.9, (-10.4, 5.5, 60.6, 90.2), 0, ((20.5, 5.5), (60.6, 30.0), (30.2, 90.2), (-10.4, 60.0)))
    [block] = apply_rules([d], 50, 80, "v4")
    assert block.quad == ((20, 6), (50, 30), (30, 80), (0, 60)) and block.bbox == (0, 6, 50, 80)
    assert block.order == 1


def test_v4_takes_the_v3_rules():
    assert LayoutRules.for_version("v4") == LayoutRules.for_version("v3")
    with pytest.raises(ValueError, match="v2, v3, v4"):
        LayoutRules.for_version("v5")
