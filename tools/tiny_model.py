"""Build small PaddleOCR-VL checkpoints of the real architecture, on disk, in seconds.

The real weights cannot be downloaded here, so tests, benchmarks and the demo-model trainer
build checkpoints that look exactly like the published ones (same classes, same files, same
special tokens, both checkpoint layouts), only narrower and shallower:

    build_tokenizer(dir, version="1.5")           SentencePiece model + tokenizer_config + template
    build_tokenizer(dir, variant="nfkc")          ... one of TOKENIZER_VARIANTS (tokenizers as
                                                  fine-tuned checkpoints may have them)
    build_checkpoint(dir, layout="original")      config.json + safetensors, random weights

Layouts (see docs/design.md section 1):
    "original"      the Hugging Face repo as PaddlePaddle published it: flat config.json,
                    `model.*`, `visual.vision_model.*`, `mlp_AR.*`, separate `lm_head.weight`,
                    weights sharded with an index file.
    "transformers"  what `save_pretrained` of transformers >= 5 writes: nested text_config,
                    `model.language_model.*`, `model.visual.*`, `model.projector.*`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Special tokens of the real tokenizer that the pipeline depends on. The real model keeps them
# at ids past the SentencePiece vocabulary; so do we.
BEGIN_OF_SENTENCE = "<|begin_of_sentence|>"
IMAGE_TOKENS = ["<|IMAGE_PLACEHOLDER|>", "<|IMAGE_START|>", "<|IMAGE_END|>"]
LOC_TOKENS = [f"<|LOC_{i}|>" for i in range(1001)]
# The markers of spotting answers (docs/positions.md), after the location tokens as in the real one.
SPOTTING_MARKERS = ["<|LOC_BEGIN|>", "<|LOC_END|>", "<|LOC_SEP|>", "<|TEXT_START|>", "<|TEXT_END|>"]

# Chat templates of the two prompt styles (docs/design.md section 2). They differ only in the ending.
_TEMPLATE = (
    "{%- if not add_generation_prompt is defined -%}{%- set add_generation_prompt = true -%}{%- endif -%}"
    "{{- '<|begin_of_sentence|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] + '\\n' }}{%- endif -%}{%- endfor -%}"
    "{%- elif message['role'] == 'user' -%}{{- 'User: ' -}}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}"
    "{{- '<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' -}}{%- endif -%}{%- endfor -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' -}}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{{- '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
CHAT_TEMPLATES = {
    "1": _TEMPLATE + "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}{%- endif -%}",
    "1.5": _TEMPLATE + "{%- if add_generation_prompt -%}{{- 'Assistant:\\n' -}}{%- endif -%}",
}
# PaddleOCR-VL 1.8 "uses the same network architecture as 1.5 and 1.6 with updated weights"
# (PaddleOCR 3.8.0 docs). Its template, preprocessor and tokenizer files could not be read here:
# the 1.8-shaped fixtures assume 1.5's, and say so (docs/design.md section 1).
CHAT_TEMPLATES["1.8"] = CHAT_TEMPLATES["1.5"]

# Tokenizers that differ from the published one in ways fine-tuned checkpoints do (issue 10):
TOKENIZER_VARIANTS = {
    "no-byte-fallback": "SentencePiece without byte tokens: unknown characters (a newline) become <unk>",
    "nfkc": "nmt_nfkc normalizer that also folds runs of spaces, with a dummy prefix",
    "no-prefix-space-key": "dummy prefix in the SentencePiece model, no add_prefix_space in tokenizer_config.json",
    "cls-template": "the chat template writes {{ cls_token }} instead of the literal <|begin_of_sentence|>",
}

PREPROCESSOR = {
    "1": {"min_pixels": 147384, "max_pixels": 2822400},
    "1.5": {"min_pixels": 112896, "max_pixels": 1003520},
}
PREPROCESSOR["1.8"] = PREPROCESSOR["1.5"]


def model_card(version: str) -> str:
    """A README.md as a hub repo has one: YAML front matter (naming another model, as a
    `base_model` does), then the title, which names the release ("PaddleOCR-VL" for v1)."""
    name = "PaddleOCR-VL" if version == "1" else f"PaddleOCR-VL-{version}"
    return (f"---\nlicense: apache-2.0\nbase_model: PaddlePaddle/PaddleOCR-VL-1.6\n---\n\n"
            f"<div align=\"center\">\n<h1 align=\"center\">\n{name}: random weights for tests\n</h1>\n</div>\n\n"
            "## Model introduction\n\nPaddleOCR-VL-0.9B, narrow and shallow.\n")

_CORPUS_WORDS = ["the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "this", "that", "be", "are", "was", "it", "an", "or", "which", "invoice", "total", "amount", "date", "page", "table", "figure", "formula", "chart", "document", "report", "summary", "number", "name", "address", "account", "payment", "due", "item", "quantity", "price", "tax", "order", "customer", "OCR", "Table", "Recognition", "Formula", "Chart", "Spotting", "Seal", "User", "Assistant", "alpha", "beta", "gamma", "delta", "epsilon", "sigma", "pi", "sum", "integral", "matrix", "vector", "value", "result"]


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?()[]{}<>+-*/=%$#&@'\"|_^~"
    out = []
    for _ in range(lines):
        words = [rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(3, 10))]
        words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
        words.append(str(rng.randint(0, 99999)))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def build_tokenizer(
    out_dir: str | Path,
    *,
    version: str = "1.5",
    vocab_size: int = 512,
    corpus: list[str] | None = None,
    seed: int = 0,
    variant: str | None = None,
    spotting_markers: bool = True,
) -> dict[str, int]:
    """Write tokenizer.model, tokenizer_config.json, added_tokens.json, special_tokens_map.json
    and the chat template of `version` into out_dir (changed as TOKENIZER_VARIANTS[variant] says).
    `spotting_markers`: add SPOTTING_MARKERS (the demo model's tokenizer predates them).
    Returns the ids of the special tokens."""
    import io

    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or _corpus(seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=variant != "no-byte-fallback",
        add_dummy_prefix=variant in ("nfkc", "no-prefix-space-key"),
        normalization_rule_name="nmt_nfkc" if variant == "nfkc" else "identity",
        remove_extra_whitespaces=variant == "nfkc",
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=[BEGIN_OF_SENTENCE],
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    base = sp.get_piece_size()

    markers = SPOTTING_MARKERS if spotting_markers else []
    added = {tok: base + i for i, tok in enumerate(IMAGE_TOKENS + LOC_TOKENS + markers)}
    decoder: dict[str, Any] = {
        "0": {"content": "<unk>", "special": True},
        "1": {"content": "<s>", "special": True},
        "2": {"content": "</s>", "special": True},
        str(sp.piece_to_id(BEGIN_OF_SENTENCE)): {"content": BEGIN_OF_SENTENCE, "special": True},
    }
    for tok, idx in added.items():
        decoder[str(idx)] = {"content": tok, "special": tok in IMAGE_TOKENS}
    for entry in decoder.values():
        entry.update({"lstrip": False, "rstrip": False, "normalized": False, "single_word": False})

    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "cls_token": BEGIN_OF_SENTENCE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "added_tokens_decoder": decoder,
    }
    if variant == "no-prefix-space-key":
        del config["add_prefix_space"]
    template = CHAT_TEMPLATES[version]
    if variant == "cls-template":
        template = template.replace("{{- '<|begin_of_sentence|>' -}}", "{{- cls_token -}}")
    if version == "1":
        config["chat_template"] = template  # v1 keeps it in tokenizer_config
    else:
        (out_dir / "chat_template.jinja").write_text(template)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "added_tokens.json").write_text(json.dumps(added, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    )
    return {
        "vocab": base + len(added),
        "begin_of_sentence": sp.piece_to_id(BEGIN_OF_SENTENCE),
        **{tok: idx for tok, idx in added.items() if tok in IMAGE_TOKENS},
    }


def tiny_sizes() -> dict[str, dict[str, Any]]:
    """Hyper-parameters of the test model: every width a multiple of 256 where llama.cpp's
    k-quants need it, everything else as small as the architecture allows."""
    return {
        "text": dict(
            hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, mrope_section=[8, 12, 12],
        ),
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    }


def full_sizes() -> dict[str, dict[str, Any]]:
    """Hyper-parameters of the real PaddleOCR-VL-0.9B (docs/design.md section 1)."""
    return {
        "text": dict(
            hidden_size=1024, intermediate_size=3072, num_hidden_layers=18, num_attention_heads=16,
            num_key_value_heads=2, head_dim=128, mrope_section=[16, 24, 24], vocab_size=103424,
        ),
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
    }


def make_config(token_ids: dict[str, int], sizes: dict[str, dict[str, Any]], rope_theta: float = 500000.0):
    """A PaddleOCRVLConfig whose text part does not tie lm_head to the embeddings (as the
    original checkpoint's code). `rope_theta`: the real model's by default."""
    from transformers import PaddleOCRVLConfig

    text = dict(sizes["text"])
    mrope = text.pop("mrope_section")
    vocab = text.pop("vocab_size", None) or ((token_ids["vocab"] + 63) // 64 * 64)  # padded, like the real one
    return PaddleOCRVLConfig(
        text_config=dict(
            vocab_size=vocab, rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
            tie_word_embeddings=False, rms_norm_eps=1e-5, **text,
        ),
        vision_config=dict(sizes["vision"]),
        image_token_id=token_ids["<|IMAGE_PLACEHOLDER|>"],
        vision_start_token_id=token_ids["<|IMAGE_START|>"],
        vision_end_token_id=token_ids["<|IMAGE_END|>"],
        tie_word_embeddings=False,
    )


def _original_config(config) -> dict[str, Any]:
    """config.json as the PaddlePaddle repo writes it: text hyper-parameters at the top level."""
    text = config.text_config
    vision = config.vision_config.to_dict()
    vision.update(model_type="paddleocr_vl", architectures=["SiglipVisionModel"])
    return {
        "architectures": ["PaddleOCRVLForConditionalGeneration"],
        "model_type": "paddleocr_vl",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "head_dim": text.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": text.rope_parameters["rope_theta"],
        "rope_scaling": {"type": "default", "mrope_section": list(text.rope_parameters["mrope_section"])},
        "use_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "image_token_id": config.image_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "vision_config": vision,
    }


def _original_name(name: str) -> str:
    for new, old in (("model.language_model.", "model."), ("model.visual.", "visual."), ("model.projector.", "mlp_AR.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def write_preprocessor(out_dir: Path, version: str, pixels: tuple[int, int] | None = None) -> None:
    """preprocessor_config.json; `pixels` = (min_pixels, max_pixels) overrides the version's limits
    (the demo model reads small images)."""
    limits = PREPROCESSOR[version] if pixels is None else {"min_pixels": pixels[0], "max_pixels": pixels[1]}
    cfg = {
        "image_processor_type": "PaddleOCRVLImageProcessor",
        "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
        **limits,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


def save_checkpoint(
    model, out_dir: str | Path, *, layout: str, version: str, tokenizer_dir: str | Path,
    pixels: tuple[int, int] | None = None,
) -> Path:
    """Save a PaddleOCRVLForConditionalGeneration in one of the two published layouts, with the
    tokenizer and preprocessor files beside it."""
    import shutil

    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        model.save_pretrained(out_dir)
    elif layout == "original":
        state = {_original_name(k): v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        names = sorted(state)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        weight_map = {}
        for fname, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(out_dir / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in keys})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
        (out_dir / "config.json").write_text(json.dumps(_original_config(model.config), indent=2))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy(f, out_dir / f.name)
    write_preprocessor(out_dir, version, pixels)
    (out_dir / "README.md").write_text(model_card(version))
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    return out_dir


def build_checkpoint(
    out_dir: str | Path,
    *,
    layout: str = "transformers",
    version: str = "1.5",
    sizes: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    tokenizer_variant: str | None = None,
) -> Path:
    """A random-weight checkpoint: tokenizer (one of TOKENIZER_VARIANTS if given), config,
    weights, preprocessor config.

    The weights are scaled so that greedy decoding does not collapse into one repeated token
    immediately, and `lm_head` differs from the embeddings so that a converter that ties them
    by mistake is caught."""
    import tempfile

    import torch
    from transformers import PaddleOCRVLForConditionalGeneration

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tok_dir:
        ids = build_tokenizer(tok_dir, version=version, seed=seed, variant=tokenizer_variant)
        config = make_config(ids, sizes or tiny_sizes())
        model = PaddleOCRVLForConditionalGeneration(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5 if "embed" not in name else 1.0)
            model.lm_head.weight.normal_(0.0, 1.0)
        return save_checkpoint(model, out_dir, layout=layout, version=version, tokenizer_dir=tok_dir)


if __name__ == "__main__":  # pragma: no cover - manual use: python tools/tiny_model.py OUT [layout] [version] [full]
    import sys

    args = sys.argv[1:]
    sizes = full_sizes() if "full" in args else None
    print(build_checkpoint(args[0], layout=args[1] if len(args) > 1 else "transformers",
                           version=args[2] if len(args) > 2 else "1.5", sizes=sizes))
