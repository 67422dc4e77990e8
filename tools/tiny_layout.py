"""Build PP-DocLayoutV2 / V3 / V4 checkpoints of the real transformers classes, on disk, in seconds.

The published `PaddlePaddle/PP-DocLayoutV2_safetensors` (`..._V3_`, `..._V4_`) folders hold
config.json, model.safetensors and preprocessor_config.json; so do these, with random weights:

    build_layout_checkpoint(dir, version="v2", size="tiny")   ~1 M parameters, input 128 x 128
    build_layout_checkpoint(dir, version="v3", size="full")   the real widths and depths, 800 x 800
    build_layout_checkpoint(dir, version="v4", warp=True)     V4 with its page-geometry head

"tiny" keeps every structural feature of the real model (HGNetV2 backbone, hybrid encoder,
deformable decoder, V2's reading-order network, V3's mask and order heads, V4's quad boxes, two
order heads and optional geometry head), only narrow and shallow, so tests run fast. "full" uses the transformers defaults, which are the published sizes
(see docs/layout.md). Neither is trained: boxes and labels are noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ppvl_batch.layout.labels import LABELS
from ppvl_batch.layout.postprocess import V2_DEFAULT_THRESHOLD, V2_THRESHOLDS

# V2 only: the thresholds its forward uses to choose which queries the reading-order network
# sees, and the label -> reading-order class map: the values of transformers' own tests (its
# thresholds are the PaddleOCR-VL v1 pipeline's; docs/layout.md).
V2_CLASS_THRESHOLDS = [V2_THRESHOLDS.get(label, V2_DEFAULT_THRESHOLD) for label in LABELS]
V2_CLASS_ORDER = [4, 2, 14, 1, 5, 7, 8, 6, 11, 11, 9, 13, 10, 10, 1, 2, 3, 0, 2, 2, 12, 1, 2, 15, 6]

ARCHITECTURES = {"v2": "PPDocLayoutV2ForObjectDetection", "v3": "PPDocLayoutV3ForObjectDetection",
                 "v4": "PPDocLayoutV4ForObjectDetection"}


def _tiny_backbone(stages: list[str], return_idx: list[int]) -> dict[str, Any]:
    return {
        "model_type": "hgnet_v2", "arch": "L", "stem_channels": [3, 16, 16],
        "stage_in_channels": [16, 32, 32, 32], "stage_mid_channels": [16, 16, 16, 16],
        "stage_out_channels": [32, 32, 32, 32], "hidden_sizes": [32, 32, 32, 32],
        "stage_numb_of_layers": [2, 2, 2, 2], "out_features": stages, "return_idx": return_idx,
    }


def _config_kwargs(version: str, size: str, warp: bool = False) -> dict[str, Any]:
    common: dict[str, Any] = {
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    if version == "v2":
        common.update(class_thresholds=V2_CLASS_THRESHOLDS, class_order=V2_CLASS_ORDER)
    if warp:  # V4's page-geometry head (off in the config's defaults)
        common.update(deform_pred=True, **({} if size == "full" else {"deform_conv_width": 8, "deform_kbins": 5}))
    if size == "full":
        return common
    tiny: dict[str, Any] = dict(
        encoder_hidden_dim=32, encoder_in_channels=[32, 32, 32], encoder_ffn_dim=16,
        encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=16, decoder_layers=2, decoder_attention_heads=2, decoder_n_points=2,
        num_queries=30, num_denoising=0,
    )
    if version == "v2":
        tiny.update(
            backbone_config=_tiny_backbone(["stage2", "stage3", "stage4"], [1, 2, 3]),
            reading_order_config={
                "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 16,
                "num_hidden_layers": 2, "coordinate_size": 3, "shape_size": 2,
                "global_pointer_head_size": 8,
            },
        )
    elif version == "v4":  # no mask branch: stages 2-4 only
        tiny.update(backbone_config=_tiny_backbone(["stage2", "stage3", "stage4"], [1, 2, 3]), global_pointer_head_size=8)
    else:
        tiny.update(
            backbone_config=_tiny_backbone(["stage1", "stage2", "stage3", "stage4"], [0, 1, 2, 3]),
            mask_feature_channels=[16, 16], x4_feat_dim=32, num_prototypes=8,
            global_pointer_head_size=8,
        )
    return {**common, **tiny}


def preprocessor_config(version: str, side: int = 800) -> dict[str, Any]:
    """The image-processor settings of the published folders (docs/layout.md)."""
    return {
        "image_processor_type": f"PPDocLayout{version.upper()}ImageProcessor",
        "do_resize": True, "size": {"height": side, "width": side},
        "resample": 3,  # PIL BICUBIC
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0, 0, 0], "image_std": [1, 1, 1],
    }


def make_model(version: str = "v2", size: str = "tiny", seed: int = 0, confident: str | None = None, warp: bool = False):
    """A random-weight PPDocLayoutV2/V3/V4ForObjectDetection in eval mode. `confident`: a label
    whose class bias is raised so that queries score far above the thresholds with it (random
    weights alone find nothing; a test that needs blocks from a real detector uses this).
    `warp`: V4 with its page-geometry head."""
    import torch
    import transformers

    if version not in ARCHITECTURES or size not in ("tiny", "full") or (warp and version != "v4"):
        raise ValueError(f"version must be v2, v3 or v4 (warp: v4 only) and size tiny or full, got {version!r} {size!r}")
    config_cls = getattr(transformers, f"PPDocLayout{version.upper()}Config")
    model_cls = getattr(transformers, ARCHITECTURES[version])
    torch.manual_seed(seed)
    config = config_cls(**_config_kwargs(version, size, warp))
    config.architectures = [ARCHITECTURES[version]]
    model = model_cls(config).eval()
    if confident is not None:
        decoder = model.model.decoder
        # V2 and V4 have one class head per decoder layer (the last one scores), V3 one shared by all
        head = decoder.class_embed if version == "v3" else decoder.class_embed[-1]
        with torch.no_grad():
            head.bias[LABELS.index(confident)] = 4.0
    return model


def build_layout_checkpoint(
    out_dir: str | Path, version: str = "v2", size: str = "tiny", seed: int = 0, confident: str | None = None,
    warp: bool = False,
) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json into out_dir."""
    out_dir = Path(out_dir)
    model = make_model(version, size, seed, confident, warp)
    model.save_pretrained(out_dir)
    side = 128 if size == "tiny" else 800
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(version, side), indent=2))
    return out_dir


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--version", choices=sorted(ARCHITECTURES), default="v2")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warp", action="store_true", help="V4: with the page-geometry head")
    args = parser.parse_args()
    print(build_layout_checkpoint(args.out_dir, args.version, args.size, args.seed, warp=args.warp))
