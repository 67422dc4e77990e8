"""Build PP-DocLayoutV2 / V3 checkpoints of the real transformers classes, on disk, in seconds.

The published `PaddlePaddle/PP-DocLayoutV2_safetensors` and `..._V3_safetensors` folders hold
config.json, model.safetensors and preprocessor_config.json; so do these, with random weights:

    build_layout_checkpoint(dir, version="v2", size="tiny")   ~1 M parameters, input 128 x 128
    build_layout_checkpoint(dir, version="v3", size="full")   the real widths and depths, 800 x 800

"tiny" keeps every structural feature of the real model (HGNetV2 backbone, hybrid encoder,
deformable decoder, V2's reading-order network, V3's mask and order heads), only narrow and
shallow, so tests run fast. "full" uses the transformers defaults, which are the published sizes
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

ARCHITECTURES = {"v2": "PPDocLayoutV2ForObjectDetection", "v3": "PPDocLayoutV3ForObjectDetection"}


def _tiny_backbone(stages: list[str], return_idx: list[int]) -> dict[str, Any]:
    return {
        "model_type": "hgnet_v2", "arch": "L", "stem_channels": [3, 16, 16],
        "stage_in_channels": [16, 32, 32, 32], "stage_mid_channels": [16, 16, 16, 16],
        "stage_out_channels": [32, 32, 32, 32], "hidden_sizes": [32, 32, 32, 32],
        "stage_numb_of_layers": [2, 2, 2, 2], "out_features": stages, "return_idx": return_idx,
    }


def _config_kwargs(version: str, size: str) -> dict[str, Any]:
    common: dict[str, Any] = {
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    if version == "v2":
        common.update(class_thresholds=V2_CLASS_THRESHOLDS, class_order=V2_CLASS_ORDER)
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


def make_model(version: str = "v2", size: str = "tiny", seed: int = 0, confident: str | None = None):
    """A random-weight PPDocLayoutV2/V3ForObjectDetection in eval mode. `confident`: a label
    whose class bias is raised so that queries score far above the thresholds with it (random
    weights alone find nothing; a test that needs blocks from a real detector uses this)."""
    import torch
    import transformers

    if version not in ARCHITECTURES or size not in ("tiny", "full"):
        raise ValueError(f"version must be v2 or v3 and size tiny or full, got {version!r} {size!r}")
    config_cls = getattr(transformers, f"PPDocLayout{version.upper()}Config")
    model_cls = getattr(transformers, ARCHITECTURES[version])
    torch.manual_seed(seed)
    config = config_cls(**_config_kwargs(version, size))
    config.architectures = [ARCHITECTURES[version]]
    model = model_cls(config).eval()
    if confident is not None:
        decoder = model.model.decoder
        # V2 has one class head per decoder layer, V3 one shared by all
        head = decoder.class_embed[-1] if version == "v2" else decoder.class_embed
        with torch.no_grad():
            head.bias[LABELS.index(confident)] = 4.0
    return model


def build_layout_checkpoint(
    out_dir: str | Path, version: str = "v2", size: str = "tiny", seed: int = 0, confident: str | None = None
) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json into out_dir."""
    out_dir = Path(out_dir)
    model = make_model(version, size, seed, confident)
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
    args = parser.parse_args()
    print(build_layout_checkpoint(args.out_dir, args.version, args.size, args.seed))
