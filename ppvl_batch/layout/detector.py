"""PP-DocLayoutV2 / V3 / V4 layout detection with transformers' model classes and our own pre-
and post-processing.

transformers' image processors for these models subclass its torchvision backend, and
torchvision does not load with our CPU torch; so the two ends are ours, written from its code
(transformers 5.24 / 5.25, docs/layout.md) and checked against it in tests/test_layout_detector.py
and tests/test_layout_v4.py:

    preprocess   page (RGB) -> uint8 CHW -> bicubic resize to 800 x 800 without antialiasing, on
                 the uint8 tensor as torchvision does on the CPU -> (x - mean*255) / (std*255);
                 V4: resized as floats, rounded and clamped to uint8, then x / 255, then normalized
    decode       sigmoid scores, top-k over query x label, xyxy boxes in page pixels, the model's
                 reading order by "win accumulation" of the pairwise order logits; sorted by it.
                 V4: quads and its two order heads (quads.py)

What `detect` returns is what `post_process_object_detection` would; PaddleX's rules come after
(postprocess.py). V3 also predicts masks, which transformers turns into polygons with OpenCV; we
keep boxes only (docs/layout.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelError
from ..hf import load_pretrained, missing_class
from .labels import LABELS
from .postprocess import Detection, LayoutRules, PageLayout, apply_rules
from .quads import decode_v4

# config.json model_type -> (our version name, transformers class)
MODEL_TYPES = {
    "pp_doclayout_v2": ("v2", "PPDocLayoutV2ForObjectDetection"),
    "pp_doclayout_v3": ("v3", "PPDocLayoutV3ForObjectDetection"),
    "pp_doclayout_v4": ("v4", "PPDocLayoutV4ForObjectDetection"),  # transformers >= 5.25
}

# Pages per detection forward pass. One 800 x 800 page holds about 0.35 GB of activations at its
# peak (full-size V3, docs/layout.md; V2 0.3 GB), so a batch of n holds n times that; on the CPU a
# batch is no faster per page (bench/RESULTS.md, layout detection), so pages go one at a time there.
DETECTION_BATCH = {"cpu": 1, "gpu": 8}

# Published preprocessor_config.json values, used where a folder has no such file.
DEFAULT_PREPROCESSOR: dict[str, Any] = {
    "size": {"height": 800, "width": 800}, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0, 0, 0], "image_std": [1, 1, 1],
}


@dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    mean: torch.Tensor  # (3,) float32; V2/V3: already divided by the rescale factor
    std: torch.Tensor
    # V4: the rescale factor, applied to the resized, rounded pixels before normalizing; None:
    # rescale fused into mean and std (V2/V3)
    rescale_first: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str, rescale_first: bool = False) -> Preprocessing:
        """Accept only settings this module implements; anything else is an error naming it.
        `rescale_first`: PPDocLayoutV4ImageProcessor's order (see __call__)."""
        merged = {**DEFAULT_PREPROCESSOR, **config}
        unsupported = [
            key for key, ok in (
                ("do_resize", merged.get("do_resize", True) is True),
                ("resample", merged.get("resample") == 3),
                ("do_center_crop", not merged.get("do_center_crop")),
                ("do_pad", not merged.get("do_pad")),
                ("do_rescale", merged.get("do_rescale") is True),
                ("do_normalize", merged.get("do_normalize") is True),
            ) if not ok
        ]
        size: Any = merged.get("size")  # a dict of two ints once checked here
        if not (isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int)):
            unsupported.append("size")
        for key in ("image_mean", "image_std"):
            if not (isinstance(merged.get(key), list) and len(merged[key]) == 3):
                unsupported.append(key)
        if unsupported:
            raise ModelError(f"{where}: unsupported preprocessor setting(s) {', '.join(unsupported)} "
                             "(expected the published PP-DocLayout values: bicubic resize to a fixed size, "
                             "rescale, normalize)")
        if rescale_first:
            return cls(height=size["height"], width=size["width"],
                       mean=torch.tensor(merged["image_mean"], dtype=torch.float32),
                       std=torch.tensor(merged["image_std"], dtype=torch.float32),
                       rescale_first=float(merged["rescale_factor"]))
        # transformers fuses rescale into normalize this way: mean / factor, std / factor (float32)
        factor = 1.0 / float(merged["rescale_factor"])
        return cls(
            height=size["height"], width=size["width"],
            mean=torch.tensor(merged["image_mean"], dtype=torch.float32) * factor,
            std=torch.tensor(merged["image_std"], dtype=torch.float32) * factor,
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One page -> (3, H, W) float32 model input."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
        if self.rescale_first is not None:
            # V4's processor: resize as floats, then round and saturate to uint8 as cv2.resize
            # does, then rescale (a product), then normalize on its own
            if pixels.shape[1:] != (self.height, self.width):
                resized = F.interpolate(pixels[None].float(), size=[self.height, self.width], mode="bicubic",
                                        align_corners=False, antialias=False)[0]
                pixels = resized.round().clamp(0, 255).to(torch.uint8)
            rescaled = pixels.to(torch.float32) * self.rescale_first
            return (rescaled - self.mean[:, None, None]) / self.std[:, None, None]
        if pixels.shape[1:] != (self.height, self.width):
            # uint8 in, uint8 out: torchvision's CPU path for bicubic (rounding inside the kernel),
            # which is not the same as resizing floats and rounding afterwards
            pixels = F.interpolate(pixels[None], size=[self.height, self.width], mode="bicubic",
                                   align_corners=False, antialias=False)[0]
        return (pixels.to(torch.float32) - self.mean[:, None, None]) / self.std[:, None, None]


def reading_order_ranks(order_logits: torch.Tensor) -> torch.Tensor:
    """(B, Q, Q) pairwise logits -> (B, Q) rank of each query in reading order. Query j's votes
    are sigmoid(l[i, j]) over i < j plus 1 - sigmoid(l[j, i]) over i > j; fewer votes = earlier."""
    p = order_logits.sigmoid()
    votes = p.triu(diagonal=1).sum(dim=1) + (1.0 - p.transpose(1, 2)).tril(diagonal=-1).sum(dim=1)
    by_rank = votes.argsort(dim=1)
    ranks = torch.empty_like(by_rank)
    ranks.scatter_(1, by_rank, torch.arange(by_rank.shape[1], device=by_rank.device).expand_as(by_rank))
    return ranks


def decode(
    logits: torch.Tensor, pred_boxes: torch.Tensor, order_logits: torch.Tensor,
    sizes: Sequence[tuple[int, int]], threshold: float, labels: Sequence[str] = LABELS,
) -> list[list[Detection]]:
    """Raw outputs of a batch -> per page, the detections with score >= threshold in reading
    order. `sizes` are (width, height) of the pages; boxes are scaled to them, not clipped."""
    ranks = reading_order_ranks(order_logits)
    centre, extent = pred_boxes.split(2, dim=-1)
    corners = torch.cat([centre - 0.5 * extent, centre + 0.5 * extent], dim=-1)
    scale = torch.tensor([[w, h, w, h] for w, h in sizes], dtype=torch.float32, device=corners.device)
    corners = corners * scale[:, None, :]

    num_queries, num_labels = logits.shape[1:]
    # top-k over every (query, label) pair: one query can come back twice with two labels
    scores, flat = logits.sigmoid().flatten(1).topk(num_queries, dim=-1)
    label_ids, queries = flat % num_labels, flat // num_labels
    corners = corners.gather(1, queries[..., None].expand(-1, -1, 4))
    ranks = ranks.gather(1, queries)

    pages = []
    for score, label_id, box, rank in zip(scores, label_ids, corners, ranks):
        keep = score >= threshold
        rank, by_order = rank[keep].sort()
        pages.append([
            Detection(labels[lab], s, tuple(b), r)
            for s, lab, b, r in zip(score[keep][by_order].tolist(), label_id[keep][by_order].tolist(),
                                    box[keep][by_order].tolist(), rank.tolist())
        ])
    return pages


class LayoutDetector:
    """A PP-DocLayoutV2, V3 or V4 checkpoint folder, ready to detect blocks on pages."""

    def __init__(self, model: torch.nn.Module, version: str, preprocessing: Preprocessing, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.version = version
        self.preprocessing = preprocessing
        self.device = device
        config: Any = model.config  # a transformers config (nn.Module types attributes as Tensor | Module)
        self.labels: tuple[str, ...] = tuple(config.id2label[i] for i in range(len(config.id2label)))
        if version == "v3":
            decoder = self.model.get_submodule("model.decoder")
            decoder.register_forward_pre_hook(_without_decoder_masks, with_kwargs=True)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> LayoutDetector:
        """A local folder as published (config.json, model.safetensors, preprocessor_config.json)."""
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{folder}: not a layout model folder (no config.json)")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{config_file}: unreadable ({exc})") from exc
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ModelError(f"{folder}: model_type {model_type!r} is not a PP-DocLayoutV2/V3/V4 model "
                             f"(expected one of {', '.join(MODEL_TYPES)})")
        labels = [config.get("id2label", {}).get(str(i)) for i in range(len(LABELS))]
        if labels != list(LABELS) or len(config.get("id2label", {})) != len(LABELS):
            raise ModelError(f"{folder}: its labels (id2label) are not the 25 PP-DocLayout labels")
        pre_file = folder / "preprocessor_config.json"
        try:
            pre_config = json.loads(pre_file.read_text(encoding="utf-8")) if pre_file.is_file() else {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{pre_file}: unreadable ({exc})") from exc
        version, class_name = MODEL_TYPES[model_type]
        preprocessing = Preprocessing.from_config(pre_config, str(pre_file), rescale_first=version == "v4")
        _check_model_class(class_name, folder)
        try:
            model = load_pretrained(class_name, folder, dtype=torch.float32)
        except Exception as exc:  # missing or mismatched weights: one line for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{folder}: cannot load the layout model ({first})") from exc
        return cls(model, version, preprocessing, device)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pages -> (B, 3, H, W) float32 on the detector's device (resized on the CPU)."""
        return torch.stack([self.preprocessing(image) for image in images]).to(self.device)

    def detect(self, images: Sequence[Image.Image], threshold: float,
               batch_size: int | None = None) -> list[list[Detection]]:
        """Per page, what transformers' forward + post_process_object_detection(threshold) gives,
        `batch_size` pages per forward pass (default: the device's, see DETECTION_BATCH)."""
        batch_size = batch_size or DETECTION_BATCH["cpu" if self.device == "cpu" else "gpu"]
        pages: list[list[Detection]] = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            with torch.inference_mode(), _boxes_of_masks_by_projection(self.version):
                out = self.model(pixel_values=self.preprocess(batch))
            sizes = [image.size for image in batch]
            if self.version == "v4":
                pages += decode_v4(out.logits, out.pred_boxes, out.relative_order_logits, out.successor_order_logits,
                                   sizes, threshold, self.labels, out.warp_params)
            else:
                pages += decode(out.logits, out.pred_boxes, out.order_logits, sizes, threshold, self.labels)
        return pages

    def blocks(self, images: Sequence[Image.Image], rules: LayoutRules | None = None,
               batch_size: int | None = None) -> list[PageLayout]:
        """Per page, the layout blocks after PaddleX's rules (the pipeline's defaults for this
        model unless `rules` is given), with the page's warp_params (V4 with that head);
        decoded at the lowest threshold of any label."""
        rules = rules or LayoutRules.for_version(self.version)
        found = self.detect(images, rules.min_threshold(), batch_size)
        return [apply_rules(page, *image.size, self.version, rules) for image, page in zip(images, found)]

    def with_rules(self, rules: LayoutRules | None = None, batch_size: int | None = None) -> RuledDetector:
        """This detector as DocumentParser takes it: `detect(pages)` gives the kept blocks."""
        return RuledDetector(self, rules or LayoutRules.for_version(self.version), batch_size)


def _check_model_class(class_name: str, folder: Path) -> None:
    """A one-line error when the installed transformers lacks the layout model's class."""
    installed = missing_class(class_name)
    if installed is not None:
        raise ModelError(f"{folder}: {class_name} needs a newer transformers (PP-DocLayoutV4: 5.25 or later; "
                         f"installed {installed})")


def _without_decoder_masks(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """PP-DocLayoutV3's decoder multiplies every layer's queries with the mask features into
    polygon masks, (batch, 6 layers, 300 queries, 200, 200) floats: 0.6 GB per page with the copy
    that stacks them, used for nothing but the masks themselves (no box, score or order depends on
    them), and we take boxes. A 1 x 1 slice of the features makes those masks 1 x 1; the encoder's
    mask-enhanced reference points, which do need the features, are computed before this."""
    if kwargs.get("mask_feat") is not None:
        kwargs = {**kwargs, "mask_feat": kwargs["mask_feat"][:, :, :1, :1]}
    return args, kwargs


def boxes_of_masks(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What transformers' V3 `mask_to_box_coordinate` computes, (..., H, W) masks -> (..., 4)
    cx cy w h in 0..1 (an empty mask: all 0), from the masks' row and column projections.

    Its own version builds five float copies of the masks, (batch, 300 queries, 200, 200) each,
    to find each mask's extent: 0.12 GB of a page's peak at full size. A mask's x extent is the
    extent of the columns that hold any of its pixels (y: rows), so the (..., W) and (..., H)
    projections give the same numbers, bit for bit (tests/test_layout_detector.py)."""
    mask = mask.bool()
    height, width = mask.shape[-2:]
    extents = []
    for axis, size in ((-2, width), (-1, height)):
        seen = mask.any(dim=axis)  # (..., size): which columns (rows) the mask reaches
        coords = torch.arange(size, device=mask.device).to(dtype)
        low = torch.where(seen, coords, torch.finfo(dtype).max).amin(dim=-1)
        high = torch.where(seen, coords, torch.finfo(dtype).min).amax(dim=-1) + 1
        extents.append((low, high))
    (x0, x1), (y0, y1) = extents
    nonempty = mask.flatten(-2).any(dim=-1, keepdim=True)
    corners = torch.stack([x0, y0, x1, y1], dim=-1) * nonempty
    scale = torch.tensor([width, height, width, height], device=mask.device, dtype=dtype)
    x0, y0, x1, y1 = (corners / scale).unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


@contextmanager
def _boxes_of_masks_by_projection(version: str) -> Iterator[None]:
    """During a V3 forward, the model's mask_to_box_coordinate is boxes_of_masks (same numbers,
    a fraction of the memory); put back afterwards. Nothing to do for V2, or for a transformers
    that has no such function."""
    if version != "v3":
        yield
        return
    from ..hf import v3_mask_to_box

    with v3_mask_to_box(boxes_of_masks):
        yield


def bundle_detector(bundle: Any, device: str = "cpu", threshold: float | None = None,
                    batch_size: int | None = None) -> RuledDetector:
    """The layout model of a bundle (bundle.Bundle) with the pipeline's rules for it; `threshold`
    replaces every label's threshold. What scan, ask --layout and DocumentParser.for_recognizer use."""
    if bundle.layout_dir is None:
        raise ModelError(f"{bundle.path}: has no layout model; "
                         f"add one with `ppvl-ocr convert --add-layout LAYOUT {bundle.path}`")
    detector = LayoutDetector.load(bundle.layout_dir, device=device)
    overrides = {} if threshold is None else {"thresholds": {}, "default_threshold": threshold}
    return detector.with_rules(LayoutRules.for_version(detector.version, **overrides), batch_size)


@dataclass(frozen=True)
class RuledDetector:
    """A LayoutDetector and the rules it is run with: the parser's Detector (layout/parser.py)."""

    detector: LayoutDetector
    rules: LayoutRules
    batch_size: int | None = None  # pages per forward pass; None: the device's default

    def detect(self, images: Sequence[Image.Image]) -> list[PageLayout]:
        return self.detector.blocks(images, self.rules, self.batch_size)
