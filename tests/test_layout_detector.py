"""Layout detection: our preprocessing and decoding against transformers' own, on tiny
random-weight PP-DocLayoutV2 / V3 checkpoints of the real classes (tools/tiny_layout.py).

transformers' image processors cannot be instantiated here (they need torchvision), but their
`post_process_object_detection` and `_get_order_seqs` use torch only: the reference below imports
the real modules with torchvision stubbed for the import, and calls those functions unbound.
The resize itself is torchvision's, so the reference for it is a port of torchvision 0.29's
`resize_image` CPU path and of transformers' `_preprocess` (cited inline).
"""

from __future__ import annotations

import copy
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import tiny_layout
import torch
import torch.nn.functional as F
from makedocs import detector_pages
from PIL import Image

from ppvl_batch.errors import ModelError
from ppvl_batch.layout.detector import LayoutDetector, Preprocessing, boxes_of_masks
from ppvl_batch.layout.labels import LABELS
from ppvl_batch.layout.postprocess import LayoutRules, apply_rules

VERSIONS = ["v2", "v3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models run ~20x faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_processors() -> dict[str, type]:
    """transformers' PPDocLayoutV2/V3ImageProcessor classes, imported with torchvision stubbed
    (only where torchvision is absent; the functions called do not use it)."""
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.v2.functional"]
    stubbed = importlib.util.find_spec("torchvision") is None
    for name in names if stubbed else []:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub
    try:
        v2 = importlib.import_module("transformers.models.pp_doclayout_v2.image_processing_pp_doclayout_v2")
        v3 = importlib.import_module("transformers.models.pp_doclayout_v3.image_processing_pp_doclayout_v3")
    finally:
        for name in names if stubbed else []:
            del sys.modules[name]
    return {"v2": v2.PPDocLayoutV2ImageProcessor, "v3": v3.PPDocLayoutV3ImageProcessor}


class _ProcessorState:
    """What post_process_object_detection reads from `self`. V3's polygon step needs OpenCV and
    is not compared (we keep boxes only), so it returns no polygons here."""

    def __init__(self, cls: type, side: int) -> None:
        self.cls = cls
        self.size = {"height": side, "width": side}

    def _get_order_seqs(self, order_logits: torch.Tensor) -> torch.Tensor:
        return self.cls._get_order_seqs(self, order_logits)

    def _extract_polygon_points_by_masks(self, boxes, masks, scale_ratio):
        return [None] * len(boxes)


def reference_pixels(images: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """transformers' PPDocLayout*ImageProcessor on the CPU, for RGB PIL pages (no torchvision)."""
    # process_image: PIL -> np.array -> CHW, contiguous
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous() for image in images]
    # _preprocess: group by shape, resize each group stacked (antialias=False), regroup
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for shape in {t.shape for t in tensors}:
        idx = [i for i, t in enumerate(tensors) if t.shape == shape]
        stacked = torch.stack([tensors[i] for i in idx])
        if shape[1:] != (height, width):
            # torchvision resize_image, CPU: bicubic accepts uint8 natively (no float cast, no
            # clamp/round afterwards); align_corners=False
            stacked = F.interpolate(stacked.reshape(-1, *shape), size=[height, width], mode="bicubic",
                                    align_corners=False, antialias=False)
        for k, i in enumerate(idx):
            out[i] = stacked[k]
    # rescale_and_normalize, fused: mean/std * (1 / rescale_factor), then tvF.normalize (sub, div)
    mean = torch.tensor([0, 0, 0]) * (1.0 / (1 / 255))
    std = torch.tensor([1, 1, 1]) * (1.0 / (1 / 255))
    return torch.stack([t.to(torch.float32).sub_(mean[:, None, None]).div_(std[:, None, None]) for t in out])




@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("layout")
    return {v: tiny_layout.build_layout_checkpoint(root / v, version=v, seed=11) for v in VERSIONS}


@pytest.fixture(scope="module")
def detectors(checkpoints) -> dict[str, LayoutDetector]:
    return {v: LayoutDetector.load(path) for v, path in checkpoints.items()}


def _heads(model: torch.nn.Module, version: str) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """The last decoder layer's class head and the last linear layer of its box head."""
    decoder = model.model.decoder
    if version == "v2":  # one head per decoder layer
        return decoder.class_embed[-1], decoder.bbox_embed[-1].layers[-1]
    return decoder.class_embed, decoder.bbox_embed.layers[-1]  # V3 shares them across layers


def crafted(detector: LayoutDetector, case: str) -> LayoutDetector:
    """A copy of the detector whose output heads force a case. Box head: sigmoid(bias +-200)
    saturates to exactly 1 or 0, so width and height are the page's (centred where the query
    is, so reaching past the page) or zero."""
    model = copy.deepcopy(detector.model)
    classes, boxes = _heads(model, detector.version)
    with torch.no_grad():
        if case == "confident":  # text far above threshold on every query, other labels near 0.5
            classes.bias.zero_()
            classes.bias[LABELS.index("text")] = 4.0
        elif case == "nothing":
            classes.bias.fill_(-200.0)
        elif case in ("full_page", "zero_size"):
            classes.bias[LABELS.index("text")] = 4.0
            boxes.weight[2:].zero_()
            boxes.bias[2:] = 200.0 if case == "full_page" else -200.0
    return LayoutDetector(model, detector.version, detector.preprocessing)


def reference_detections(detector: LayoutDetector, processor: type, images, threshold: float):
    """transformers: forward on its own preprocessing, then its post_process_object_detection.
    The forward is the model's own: a copy without our hooks (V3's decoder masks are computed)."""
    pixels = reference_pixels(images, detector.preprocessing.height, detector.preprocessing.width)
    model = copy.deepcopy(detector.model)
    for module in model.modules():
        module._forward_pre_hooks.clear()
    with torch.inference_mode():
        out = model(pixel_values=pixels)
    state = _ProcessorState(processor, detector.preprocessing.height)
    # V3's is wrapped in an OpenCV check, for the polygon step that the state above stubs out
    post_process = processor.post_process_object_detection
    results = getattr(post_process, "__wrapped__", post_process)(
        state, out, threshold=threshold, target_sizes=[(im.height, im.width) for im in images])
    return [
        [(LABELS[lab], s, tuple(b), o) for s, lab, b, o in zip(
            r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist(), r["order_seq"].tolist())]
        for r in results
    ]


def ours(detector: LayoutDetector, images, threshold: float, batch_size: int | None = 8):
    return [[(d.label, d.score, d.box, d.order) for d in page]
            for page in detector.detect(images, threshold, batch_size=batch_size)]


def test_v3_skips_the_decoders_polygon_masks(detectors):
    """Our V3 forward makes 1 x 1 masks instead of the (6 layers x 300 queries x H/4 x W/4) ones
    nobody reads; the rest of the output is bit-identical (test_detection_equals_transformers)."""
    detector = detectors["v3"]
    pixels = detector.preprocess(detector_pages()[:1])
    with torch.inference_mode():
        ours_out = detector.model(pixel_values=pixels)
        model = copy.deepcopy(detector.model)
        for module in model.modules():
            module._forward_pre_hooks.clear()
        full = model(pixel_values=pixels)
    assert ours_out.out_masks.shape[-2:] == (1, 1)
    assert full.out_masks.shape[-1] > 1
    for name in ("logits", "pred_boxes", "order_logits"):
        assert torch.equal(getattr(ours_out, name), getattr(full, name))


def test_boxes_of_masks_equal_transformers_mask_to_box_coordinate():
    """Our projection version gives transformers' numbers bit for bit: random masks of several
    densities, an empty one, a full one, one pixel in a corner, a ragged shape, extra batch dims."""
    from transformers.models.pp_doclayout_v3.modeling_pp_doclayout_v3 import mask_to_box_coordinate

    g = torch.Generator().manual_seed(3)
    for shape, density in [((1, 300, 200, 200), 0.5), ((2, 30, 13, 17), 0.02), ((3, 5, 1, 9), 0.3)]:
        masks = torch.rand(shape, generator=g) < density
        masks[0, 0] = False
        masks[0, 1] = True
        masks[0, 2] = False
        masks[0, 2, -1, -1] = True
        for dtype in (torch.float32, torch.float64):
            expected = mask_to_box_coordinate(masks, dtype=dtype)
            got = boxes_of_masks(masks, dtype)
            assert got.dtype == expected.dtype and torch.equal(got, expected), (shape, dtype)
    assert torch.equal(boxes_of_masks(torch.zeros(1, 2, 4, 4, dtype=torch.bool), torch.float32), torch.zeros(1, 2, 4))


def test_detect_puts_transformers_mask_to_box_coordinate_back(detectors):
    from transformers.models.pp_doclayout_v3 import modeling_pp_doclayout_v3 as modeling

    original = modeling.mask_to_box_coordinate
    detectors["v3"].detect(detector_pages()[:1], 0.5)
    assert modeling.mask_to_box_coordinate is original


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", ["random", "confident", "full_page", "zero_size", "nothing"])
def test_detection_equals_transformers(version, case, detectors, reference_processors):
    detector = crafted(detectors[version], case)
    images = detector_pages()
    if case == "random":
        # a threshold equal to some query's score: the >= boundary is part of the comparison
        all_scores = sorted(s for page in ours(detector, images, 0.0) for _, s, _, _ in page)
        threshold = all_scores[-12]
    else:
        threshold = LayoutRules.for_version(version).min_threshold()
    expected = reference_detections(detector, reference_processors[version], images, threshold)
    detections = detector.detect(images, threshold, batch_size=len(images))  # one forward, as the reference's
    got = [[(d.label, d.score, d.box, d.order) for d in page] for page in detections]
    assert got == expected
    # ... also one page per forward pass (another batch is other float rounding: compare with
    # transformers run the same way)
    assert ours(detector, images, threshold, batch_size=None) == ours(detector, images, threshold, batch_size=1)  # the CPU's
    assert ours(detector, images, threshold, batch_size=1) == [
        reference_detections(detector, reference_processors[version], [im], threshold)[0] for im in images]

    counts = [len(page) for page in got]
    if case == "nothing":
        assert counts == [0, 0, 0]
        return
    assert sum(counts) > 0
    for image, page in zip(images, got):
        orders = [o for _, _, _, o in page]
        assert orders == sorted(orders)
        for _, score, (x0, y0, x1, y1), _ in page:
            assert score >= threshold
            if case == "full_page":
                assert x1 - x0 == pytest.approx(image.width, abs=1e-3)
                assert y1 - y0 == pytest.approx(image.height, abs=1e-3)
            if case == "zero_size":
                assert (x0, y0) == (x1, y1)
    if case == "zero_size":  # nothing survives the clip-and-drop-empty rule
        assert all(apply_rules(page, *im.size, version) == [] for im, page in zip(images, detections))
    if case == "full_page":  # page-sized boxes around each query's centre, clipped to the page
        for image, page in zip(images, detections):
            blocks = apply_rules(page, *image.size, version)
            assert blocks
            for b in blocks:
                x0, y0, x1, y1 = b.bbox
                assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
                assert (x0 == 0 or x1 == image.width) and (y0 == 0 or y1 == image.height)


def test_two_labels_of_one_query_share_its_order(detectors, reference_processors):
    """Top-k runs over (query, label) pairs, so a query can come back twice with two labels,
    one box and one reading-order rank. Crafted: footnote's head row is text's and every other
    label is far below, so the top 30 pairs are both labels of the best queries (a random tiny
    model scores many queries alike, so ties at the cut may leave some single)."""
    detector = crafted(detectors["v3"], "random")
    classes, _ = _heads(detector.model, "v3")
    text, footnote = LABELS.index("text"), LABELS.index("footnote")
    with torch.no_grad():
        classes.bias.fill_(-200.0)
        classes.bias[[text, footnote]] = 0.0
        classes.weight[footnote] = classes.weight[text]
    images = detector_pages()[:1]
    page = detector.detect(images, 0.0)[0]
    assert [(d.label, d.score, d.box, d.order) for d in page] == reference_detections(
        detector, reference_processors["v3"], images, 0.0)[0]
    by_query: dict = {}
    for d in page:  # the rank identifies the query
        by_query.setdefault(d.order, []).append(d)
    twins = [group for group in by_query.values() if len(group) == 2]
    assert len(twins) >= 5 and all(len(group) <= 2 for group in by_query.values())
    for pair in twins:
        assert sorted(d.label for d in pair) == ["footnote", "text"]
        assert pair[0].box == pair[1].box and pair[0].score == pair[1].score


@pytest.mark.parametrize("version", VERSIONS)
def test_blocks_lose_nothing_by_decoding_at_the_lowest_threshold(version, detectors):
    """blocks() decodes once at the lowest label threshold (V2: 0.4, below most labels' 0.5):
    the same blocks as decoding everything and letting the rules filter."""
    detector = crafted(detectors[version], "confident")
    images = detector_pages()
    got = detector.blocks(images)
    assert got == [apply_rules(page, *im.size, version) for im, page in zip(images, detector.detect(images, 0.0))]
    assert any(got)
    strict = LayoutRules.for_version(version, default_threshold=1.0, thresholds={})
    assert detector.blocks(images, strict) == [[] for _ in images]


def test_preprocessing_equals_reference():
    images = detector_pages() + [Image.new("RGB", (800, 800), (12, 200, 77))]
    pre = Preprocessing.from_config({}, "defaults")
    got = torch.stack([pre(im) for im in images])
    expected = reference_pixels(images, 800, 800)
    assert got.dtype == torch.float32 and got.shape == (4, 3, 800, 800)
    assert torch.equal(got, expected)
    # independent facts: an 800 x 800 page is only rescaled; a flat page stays flat
    assert torch.equal(got[3], torch.from_numpy(np.array(images[3])).permute(2, 0, 1).float() / 255)
    flat = pre(Image.new("RGB", (123, 457), (40, 80, 160)))
    assert torch.equal(flat, torch.tensor([40, 80, 160]).float()[:, None, None].expand(3, 800, 800) / 255)


def test_preprocessing_resizes_uint8_like_torchvision_on_cpu():
    """Resizing the uint8 page (torchvision's CPU path) differs from resizing floats and rounding,
    so the float shortcut would not match the reference."""
    image = detector_pages()[2]
    got = Preprocessing.from_config({}, "defaults")(image)
    as_float = F.interpolate(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float(), size=[800, 800],
                             mode="bicubic", align_corners=False).clamp(0, 255).round()[0] / 255
    assert not torch.equal(got, as_float)


def test_grey_and_rgba_pages_are_converted_to_rgb(detectors):
    pre = detectors["v2"].preprocessing
    rgb = Image.new("RGB", (200, 300), (90, 90, 90))
    assert torch.equal(pre(rgb.convert("L")), pre(rgb))
    assert torch.equal(pre(rgb.convert("RGBA")), pre(rgb))


def test_load_uses_the_folders_preprocessor_size(checkpoints):
    detector = LayoutDetector.load(checkpoints["v3"])
    assert (detector.version, detector.preprocessing.height, detector.preprocessing.width) == ("v3", 128, 128)
    assert detector.preprocess(detector_pages()).shape == (3, 3, 128, 128)


def _copy_folder(src, dst, edit_config=None, edit_pre=None):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    for name, edit in (("config.json", edit_config), ("preprocessor_config.json", edit_pre)):
        if edit:
            data = json.loads((dst / name).read_text())
            edit(data)
            (dst / name).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("breakage, message", [
    ("no_config", "no config.json"),
    ("other_model", "model_type 'rt_detr' is not a PP-DocLayoutV2/V3/V4 model"),
    ("labels", "not the 25 PP-DocLayout labels"),
    ("resample", "unsupported preprocessor setting(s) resample"),
    ("size", "unsupported preprocessor setting(s) size, image_std"),
    ("weights", "cannot load the layout model"),
])
def test_bad_folders_fail_with_one_line(checkpoints, tmp_path, breakage, message):
    src = checkpoints["v2"]
    if breakage == "no_config":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif breakage == "other_model":
        folder = _copy_folder(src, tmp_path / "x", edit_config=lambda c: c.update(model_type="rt_detr"))
    elif breakage == "labels":
        folder = _copy_folder(src, tmp_path / "x", edit_config=lambda c: c["id2label"].update({"3": "figure"}))
    elif breakage == "resample":
        folder = _copy_folder(src, tmp_path / "x", edit_pre=lambda p: p.update(resample=2))
    elif breakage == "size":
        folder = _copy_folder(src, tmp_path / "x", edit_pre=lambda p: p.update(size={"shortest_edge": 800}, image_std=1))
    else:
        folder = _copy_folder(src, tmp_path / "x")
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError) as info:
        LayoutDetector.load(folder)
    assert message in str(info.value) and "\n" not in str(info.value)
