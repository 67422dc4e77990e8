"""PaddleOCR-VL checkpoint -> model bundle.

A bundle is a folder:

    manifest.json            format version, id, source, files with sha256 and sizes, settings
    config.json              the checkpoint's config (rebuilds the vision tower in PyTorch)
    preprocessor_config.json image preprocessing (smart_resize limits, mean/std)
    chat_template.jinja      the prompt template of this model version
    tokenizer.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json, ...
                             the checkpoint's tokenizer files, copied as they are (prompts are
                             rendered and tokenized by transformers from them, docs/prompts.md)
    vision.safetensors       vision encoder + projector, at the checkpoint's precision
    text-<QUANT>.gguf        the ERNIE decoder for llama.cpp (arch `paddleocr`), one per quant
    mmproj-F16.gguf          optional (--mmproj): vision + projector as llama.cpp's own mmproj,
                             to compare our PyTorch vision with llama.cpp running the whole model

The text GGUF is written by our code with the `gguf` package (docs/design.md section 5), streaming
one tensor at a time, as F32; llama.cpp's own quantizer (`llama_model_quantize`) then makes each
requested type from it. Everything is written into a hidden staging folder that is renamed into
place last, so an interrupted convert never leaves something that looks like a bundle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, MANIFEST, is_bundle, sha256_file
from .checkpoint import Checkpoint, open_checkpoint, resolve_source
from .errors import ModelError, OutputError, UsageError
from .engine.tokenizer import TOKENIZER_FILES
from .files import fsync_dir

# --quant name -> llama_ftype (llama.h)
QUANT_TYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q8_0": 7,
    "Q5_K_M": 17,
    "Q4_K_M": 15,
    "Q4_0": 2,
}
DEFAULT_QUANT = "Q4_K_M"

Log = Callable[[str], None]


def _no_log(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def build_vocab(ckpt: Checkpoint) -> Vocab:
    """SentencePiece pieces + the tokenizer's added tokens, padded to the model's vocab_size."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString((ckpt.path / "tokenizer.model").read_bytes())
    except Exception as exc:
        raise ModelError(f"{ckpt.path / 'tokenizer.model'}: not a SentencePiece model ({exc})") from exc
    if not proto.pieces:
        raise ModelError(f"{ckpt.path / 'tokenizer.model'}: not a SentencePiece model (no pieces)")

    # sentencepiece's piece types use the same numbering as gguf.TokenType (NORMAL=1 ... BYTE=6).
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]

    added: dict[int, tuple[str, bool]] = {}
    added_json = ckpt.path / "added_tokens.json"
    if added_json.is_file():
        for content, idx in json.loads(added_json.read_text(encoding="utf-8")).items():
            added[int(idx)] = (content, True)
    for idx, entry in ckpt.tokenizer_config.get("added_tokens_decoder", {}).items():
        added[int(idx)] = (entry["content"], bool(entry.get("special", False)))

    size = max(ckpt.text.vocab_size, len(tokens), max(added, default=-1) + 1)
    while len(tokens) < size:  # llama.cpp needs a row of the embedding for every id
        tokens.append(f"[PAD{len(tokens)}]".encode())
        scores.append(0.0)
        types.append(int(gguf.TokenType.UNUSED))
    for idx, (content, special) in added.items():
        if idx >= len(proto.pieces):
            tokens[idx] = content.encode("utf-8")
            scores[idx] = -1000.0
        if types[idx] != int(gguf.TokenType.UNKNOWN):
            types[idx] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)

    by_text = {t: i for i, t in enumerate(tokens)}
    cfg = ckpt.tokenizer_config

    def token_id(key: str, default: int) -> int:
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return by_text.get(value.encode("utf-8"), default) if isinstance(value, str) else default

    return Vocab(
        tokens=tokens,
        scores=scores,
        types=types,
        bos_id=token_id("bos_token", 1),
        eos_id=token_id("eos_token", 2),
        unk_id=token_id("unk_token", 0),
        pad_id=token_id("pad_token", 0),
        add_bos=bool(cfg.get("add_bos_token", False)),
        add_eos=bool(cfg.get("add_eos_token", False)),
        add_space_prefix=bool(cfg.get("add_prefix_space", proto.normalizer_spec.add_dummy_prefix)),
    )


# ---------------------------------------------------------------------------------------------
# Text decoder -> GGUF
# ---------------------------------------------------------------------------------------------


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    bf16: bool  # stored as bf16 in the checkpoint

    @property
    def keep_bf16(self) -> bool:
        # bf16 matrices stay bf16 (lossless, half the bytes of f32); vectors (norms) are f32 as
        # llama.cpp's own converter writes them.
        return self.bf16 and len(self.shape) > 1


def _plan_text_tensors(ckpt: Checkpoint) -> list[PlannedTensor]:
    """Every decoder tensor with its GGUF name and shape, loaded only when written."""
    import gguf
    from safetensors import safe_open

    hp = ckpt.text
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PADDLEOCR, hp.num_hidden_layers)
    q_rows = hp.num_attention_heads * hp.head_dim
    kv_rows = hp.num_key_value_heads * hp.head_dim

    def loader(file: Path, raw: str, rows: slice | None = None) -> Callable[[], np.ndarray]:
        def load() -> torch.Tensor:
            with safe_open(str(file), framework="pt") as st:
                return st.get_slice(raw)[rows] if rows is not None else st.get_tensor(raw)

        return load

    def shape_and_dtype(file: Path, raw: str) -> tuple[tuple[int, ...], str]:
        with safe_open(str(file), framework="pt") as st:
            info = st.get_slice(raw)
            return tuple(info.get_shape()), info.get_dtype()

    planned: list[PlannedTensor] = []
    for canon, (file, raw) in sorted(ckpt.tensor_names().items()):
        if not (canon.startswith("text.") or canon == "lm_head.weight"):
            continue
        hf_name = "lm_head.weight" if canon == "lm_head.weight" else "model." + canon[len("text."):]
        shape, dtype = shape_and_dtype(file, raw)
        # Some exports fuse q/k/v and gate/up; llama.cpp wants them apart.
        if ".qkv_proj." in hf_name:
            bounds = [("q_proj", 0, q_rows), ("k_proj", q_rows, q_rows + kv_rows), ("v_proj", q_rows + kv_rows, q_rows + 2 * kv_rows)]
            parts = [(hf_name.replace("qkv_proj", p), slice(a, b)) for p, a, b in bounds]
        elif ".up_gate_proj." in hf_name:
            half = shape[0] // 2
            parts = [(hf_name.replace("up_gate_proj", "gate_proj"), slice(0, half)),
                     (hf_name.replace("up_gate_proj", "up_proj"), slice(half, shape[0]))]
        else:
            parts = [(hf_name, None)]
        for part_name, rows in parts:
            gguf_name = name_map.get_name(part_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ModelError(f"{ckpt.path}: unexpected decoder tensor {raw!r}")
            part_shape = shape if rows is None else (rows.stop - rows.start, *shape[1:])
            planned.append(PlannedTensor(gguf_name, part_shape, loader(file, raw, rows), dtype == "BF16"))

    names = {t.name for t in planned}
    for required in ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"):
        if required not in names:
            raise ModelError(f"{ckpt.path}: decoder weights incomplete ({required} has no source tensor)")
    if "output.weight" not in names and not hp.tie_word_embeddings:
        raise ModelError(f"{ckpt.path}: lm_head.weight is missing and the config does not tie it to the embeddings")
    return planned


def write_text_gguf(ckpt: Checkpoint, out: Path, log: Log = _no_log, progress: bool = False) -> bool:
    """The decoder as a GGUF of arch `paddleocr`, streamed tensor by tensor, at the checkpoint's
    precision (bf16 matrices stay bf16, everything else f32). Returns whether it is all f32."""
    import gguf
    from tqdm import tqdm

    hp = ckpt.text
    vocab = build_vocab(ckpt)
    planned = _plan_text_tensors(ckpt)
    # If lm_head is present it must become output.weight: llama.cpp silently reuses the
    # embeddings when output.weight is missing (docs/design.md section 1).
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PADDLEOCR])
    writer.add_name(ckpt.path.name)
    writer.add_context_length(hp.max_position_embeddings)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_block_count(hp.num_hidden_layers)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_attention_heads)
    writer.add_head_count_kv(hp.num_key_value_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_sections([*hp.mrope_section, 0])
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    all_f32 = not any(t.keep_bf16 for t in planned)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if all_f32 else gguf.LlamaFileType.MOSTLY_BF16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_chat_template(ckpt.chat_template)

    for t in planned:
        if t.keep_bf16:
            nbytes = int(np.prod(t.shape)) * 2
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.uint16), nbytes, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), int(np.prod(t.shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tqdm(planned, desc="text decoder", unit="tensor", disable=not progress, file=None):
        tensor = t.load()
        if t.keep_bf16:  # numpy has no bf16: write the raw 16-bit patterns
            data = tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        else:
            data = np.ascontiguousarray(tensor.float().numpy())
        if data.shape != t.shape:
            raise ModelError(f"{ckpt.path}: tensor for {t.name} has shape {data.shape}, expected {t.shape}")
        writer.write_tensor_data(data)
    writer.close()
    log(f"wrote text decoder: {len(planned)} tensors ({'f32' if all_f32 else 'bf16'}), vocab {len(vocab.tokens)}")
    return all_f32


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer, in process: no llama.cpp binary needed."""
    import llama_cpp

    from .engine.llama import init_llama

    init_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = threads or 0
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), llama_cpp.byref(params)) != 0:
        raise ModelError(f"llama.cpp could not quantize the decoder to {quant}")


# ---------------------------------------------------------------------------------------------
# Vision tower -> safetensors
# ---------------------------------------------------------------------------------------------


_SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def vision_tensor_names(config: dict[str, Any]) -> set[str]:
    """Every tensor ppvl_batch.engine.vision.VisionTower loads for this config (built without memory)."""
    from transformers import PaddleOCRVLConfig

    from .engine.vision import VisionTower

    with torch.device("meta"):
        return set(VisionTower(PaddleOCRVLConfig(**config)).state_dict())


def write_vision(ckpt: Checkpoint, out: Path) -> dict[str, Any]:
    """Vision encoder and projector under the names of ppvl_batch.engine.vision.VisionTower, at the
    checkpoint's own precision.

    Written tensor by tensor: safetensors' save_file wants every tensor in memory at once and
    copies each to bytes, which would double the vision tower (0.9 GB) in RAM. The format is a
    little-endian u64 header length, a JSON header with each tensor's dtype, shape and byte
    range, then the raw bytes."""
    from safetensors import safe_open

    sources = {n: src for n, src in ckpt.tensor_names().items() if n.startswith(("visual.", "projector."))}
    missing = sorted(vision_tensor_names(ckpt.config) - set(sources))
    if missing:
        raise ModelError(f"{ckpt.path}: vision weights incomplete ({len(missing)} missing, e.g. {missing[0]})")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = parameters = 0
    for name in sorted(sources):
        file, raw = sources[name]
        with safe_open(str(file), framework="pt") as st:
            info = st.get_slice(raw)
            dtype, shape = info.get_dtype(), list(info.get_shape())
        count = int(np.prod(shape))
        size = count * _SAFETENSORS_ITEM_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        parameters += count
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in sorted(sources):
            file, raw = sources[name]
            with safe_open(str(file), framework="pt") as st:
                tensor = st.get_tensor(raw).contiguous()
            f.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    dtypes = sorted({v["dtype"] for k, v in header.items() if k != "__metadata__"})
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    return {"dtype": names.get(dtypes[0], dtypes[0]) if len(dtypes) == 1 else "mixed", "parameters": parameters}


# ---------------------------------------------------------------------------------------------
# Vision tower -> mmproj GGUF (llama.cpp's own vision path, for comparison)
# ---------------------------------------------------------------------------------------------

MMPROJ_TYPES = {"F16": "MOSTLY_F16", "F32": "ALL_F32"}  # --outtype of llama.cpp's converter -> LlamaFileType


MMPROJ_PREFIX = "mmproj-"


def mmproj_filename(ftype: str = "F16") -> str:
    return f"{MMPROJ_PREFIX}{ftype}.gguf"


def _mmproj_source_name(canon: str) -> str:
    """Canonical name -> the name in the original checkpoint layout after the renaming llama.cpp's
    converter (PaddleOCRVisionModel) applies: `visual.` becomes `model.`, `mlp_AR.` stays."""
    if canon.startswith("visual."):
        return "model." + canon[len("visual."):]
    return "mlp_AR." + canon[len("projector."):]


def _mmproj_is_f16(gguf_name: str, shape: tuple[int, ...], ftype: str) -> bool:
    # llama.cpp's converter rules: vectors and norms stay f32, so does the learned position
    # grid (V_ENC_EMBD_POS, it is interpolated per image); the patch conv is forced to the
    # outtype although it is 4-D; every other matrix takes the outtype.
    if ftype != "F16" or len(shape) < 2 or gguf_name.endswith("_norm.weight"):
        return False
    return gguf_name != "v.position_embd.weight"


def write_mmproj(ckpt: Checkpoint, out: Path, ftype: str = "F16") -> int:
    """Vision encoder + projector as the mmproj GGUF llama.cpp's convert_hf_to_gguf.py writes
    for PaddleOCR-VL (arch `clip`, projector type `paddleocr`), streamed tensor by tensor.
    Returns the number of tensors written."""
    sources = {n: src for n, src in ckpt.tensor_names().items() if n.startswith(("visual.", "projector."))}
    return _write_mmproj(sources, ckpt.vision_config, ckpt.preprocessor, ckpt.text.hidden_size, ckpt.path.name, out, ftype)


def _write_mmproj(
    sources: dict[str, tuple[Path, str]],
    vision: dict[str, Any],
    pre: dict[str, Any],
    text_hidden: int,
    name: str,
    out: Path,
    ftype: str,
) -> int:
    """`sources`: canonical vision/projector tensor name -> (safetensors file, name in it)."""
    import gguf
    from safetensors import safe_open

    if ftype not in MMPROJ_TYPES:
        raise UsageError(f"unknown mmproj type {ftype!r}; choose from {', '.join(MMPROJ_TYPES)}")
    if int(vision.get("spatial_merge_size", 2)) != 2:
        raise ModelError(f"{name}: llama.cpp's paddleocr projector merges 2x2 patches; this model merges "
                         f"{vision['spatial_merge_size']}x{vision['spatial_merge_size']}")
    min_pixels = int(pre.get("min_pixels") or pre.get("size", {}).get("shortest_edge"))
    max_pixels = int(pre.get("max_pixels") or pre.get("size", {}).get("longest_edge"))
    layers = int(vision["num_hidden_layers"])
    # The projector's `mlp_AR.linear_{n}` is mapped like a block tensor: the map must reach mm.2
    # even when the encoder has fewer layers (the tiny test models).
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(layers, 3))

    planned: list[tuple[str, tuple[int, ...], Path, str, bool]] = []  # gguf name, shape, file, raw name, f16
    for canon, (file, raw) in sorted(sources.items()):
        gguf_name = name_map.get_name(_mmproj_source_name(canon), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"{name}: unexpected vision tensor {raw!r}")
        with safe_open(str(file), framework="pt") as st:
            shape = tuple(st.get_slice(raw).get_shape())
        planned.append((gguf_name, shape, file, raw, _mmproj_is_f16(gguf_name, shape, ftype)))

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, MMPROJ_TYPES[ftype]))
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(text_hidden)
    # llama.cpp's converter stores sqrt(max_pixels) as the image size; the position grid size
    # comes from the tensor itself.
    writer.add_vision_image_size(int(math.sqrt(max_pixels)))
    writer.add_vision_patch_size(int(vision["patch_size"]))
    writer.add_vision_embedding_length(int(vision["hidden_size"]))
    writer.add_vision_feed_forward_length(int(vision["intermediate_size"]))
    writer.add_vision_block_count(layers)
    writer.add_vision_head_count(int(vision["num_attention_heads"]))
    writer.add_vision_image_mean([float(v) for v in pre["image_mean"]])
    writer.add_vision_image_std([float(v) for v in pre["image_std"]])
    writer.add_clip_projector_type(gguf.VisionProjectorType.PADDLEOCR)
    writer.add_vision_max_pixels(max_pixels)
    writer.add_vision_min_pixels(min_pixels)
    writer.add_vision_use_gelu(True)
    # llama.cpp's converter reads `rms_norm_eps` (absent: 1e-6); the encoder's LayerNorms use
    # `layer_norm_eps`, which is 1e-6 in every published config. Write the one the model uses.
    writer.add_vision_attention_layernorm_eps(float(vision.get("layer_norm_eps", 1e-6)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for gguf_name, shape, _, _, f16 in planned:
        dtype = np.dtype(np.float16 if f16 else np.float32)
        writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, _, file, raw, f16 in planned:
        with safe_open(str(file), framework="pt") as st:
            tensor = st.get_tensor(raw)
        data = tensor.float().numpy()
        writer.write_tensor_data(np.ascontiguousarray(data.astype(np.float16) if f16 else data))
    writer.close()
    return len(planned)


# ---------------------------------------------------------------------------------------------
# Tokenizer: the bundle's prompts and text must be transformers' own
# ---------------------------------------------------------------------------------------------

# Free prompts convert checks besides the task prompts: whitespace of every kind, non-ASCII text.
CHECK_PROMPTS = (
    "  Read the\ttotal,  then the date:\n\n  ünïcödé 12,50 € 中文 \t",
    "\nline one\r\nline two  \u3000end ",
)


def _first_difference(ours: list[int], theirs: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))


def verify_tokenizer(checkpoint: Path, bundle: Path) -> int:
    """Prove that the prompt ids and the text our recognizer makes from `bundle` equal what
    transformers makes from `checkpoint`: every task prompt, free prompts with whitespace and
    non-ASCII text, one with an added token's text; a prompt with a special token's text must be
    refused. A difference is a ModelError naming its first position. Returns the prompts checked."""
    import random

    from .engine.detokenize import Detokenizer
    from .engine.prompt import IMAGE_PLACEHOLDER, TASKS
    from .engine.tokenizer import PromptError, PromptTokenizer, load_tokenizer

    reference = load_tokenizer(checkpoint)
    ours = PromptTokenizer.load(bundle)
    plain_added = [t.content for t in reference.added_tokens_decoder.values() if not t.special]
    texts = [*TASKS.values(), *CHECK_PROMPTS]
    if plain_added:
        texts.append(f"Where is {plain_added[len(plain_added) // 2]} on the page?")
    for text in texts:
        before, after = ours.prompt_ids(text)
        for n in (1, 5):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            rendered = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            expected = reference(rendered.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * n), add_special_tokens=False)["input_ids"]
            got = before + [ours.placeholder_id] * n + after
            if got != expected:
                at = _first_difference(got, expected)
                raise ModelError(
                    f"prompt ids for {text!r} differ from transformers' at position {at}: ours "
                    f"{got[at:at + 3]}, transformers {expected[at:at + 3]}; the bundle would not answer as the checkpoint")
    for special in ours.special_tokens:
        try:
            ours.prompt_ids(f"Read {special} here")
        except PromptError:
            continue
        raise ModelError(f"a prompt with the special token {special!r} was not refused")

    # Decoding: random id sequences, half of them byte tokens and special tokens.
    detok = Detokenizer(ours.tokenizer)
    size = len(reference)
    favoured = [i for i in range(size) if (reference.convert_ids_to_tokens(i) or "").startswith("<0x")]
    favoured += [reference.convert_tokens_to_ids(t) for t in ours.special_tokens]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice(favoured) if favoured and rng.random() < 0.5 else rng.randrange(size) for _ in range(rng.randint(1, 24))]
        theirs, mine = reference.decode(ids, skip_special_tokens=False), detok.decode(ids)
        if theirs != mine:
            at = _first_difference(list(mine), list(theirs))
            raise ModelError(f"decoding {ids} differs from transformers' at character {at}: ours {mine[at:at + 5]!r}, "
                             f"transformers {theirs[at:at + 5]!r}")
    return len(texts)


# ---------------------------------------------------------------------------------------------
# The whole conversion
# ---------------------------------------------------------------------------------------------


def parse_quants(quants: tuple[str, ...] | list[str]) -> list[str]:
    names = []
    for q in quants or (DEFAULT_QUANT,):
        q = q.upper()
        if q not in QUANT_TYPES:
            raise UsageError(f"unknown quant {q!r}; choose from {', '.join(QUANT_TYPES)}")
        if q not in names:
            names.append(q)
    return names


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a bundle folder; refusing to overwrite it")
    if is_bundle(out):
        if not overwrite:
            raise OutputError(f"{out}: a bundle is already there; pass --overwrite to replace it")
        return
    if any(out.iterdir()):
        raise OutputError(f"{out}: exists, is not empty and is not a bundle; refusing to overwrite it")


def bundle_id(name: str, files: dict[str, dict[str, Any]], prompt_style: str) -> str:
    """The bundle's id, which goes into every checkpoint key: it changes with anything that can
    change an answer, i.e. the content of every file the model is loaded from (decoders,
    tokenizer files, chat template, preprocessor config, config, vision weights), sorted by name,
    and the prompt style. The mmproj GGUF is left out: ppvl-ocr never reads it. Bundles made
    before this scheme keep the id in their manifest (it is read, never recomputed)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"
    covered = {n: files[n]["sha256"] for n in sorted(files) if not n.startswith(MMPROJ_PREFIX)}
    digest = hashlib.sha256(json.dumps({"files": covered, "prompt_style": prompt_style}, sort_keys=True).encode())
    return f"{slug}-{digest.hexdigest()[:8]}"


def convert(
    source: str,
    out: str | Path,
    quants: tuple[str, ...] | list[str] = (DEFAULT_QUANT,),
    *,
    overwrite: bool = False,
    threads: int | None = None,
    mmproj: bool = False,
    log: Log = _no_log,
    progress: bool = False,
) -> Path:
    """Convert a PaddleOCR-VL checkpoint (folder or hub id) into a bundle at `out`; `mmproj` adds
    the vision tower as llama.cpp's mmproj GGUF too."""
    quant_names = parse_quants(quants)
    out = Path(out)
    _check_destination(out, overwrite)
    ckpt = open_checkpoint(resolve_source(source))
    ckpt.tensor_names()  # fail on unreadable shards before any work
    started = time.monotonic()

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        log(f"converting {ckpt.path} (PaddleOCR-VL {ckpt.model_version}, prompt style {ckpt.prompt_style})")
        (stage / "config.json").write_text(json.dumps(ckpt.config, indent=2))
        (stage / "preprocessor_config.json").write_text(json.dumps(ckpt.preprocessor, indent=2))
        # The tokenizer files as the checkpoint has them: transformers loads the bundle's tokenizer
        # exactly as it loads the checkpoint's (docs/prompts.md).
        for name in TOKENIZER_FILES:
            if (ckpt.path / name).is_file():
                shutil.copyfile(ckpt.path / name, stage / name)
        if not (stage / "chat_template.jinja").is_file():
            (stage / "chat_template.jinja").write_text(ckpt.chat_template)
        log(f"checked prompt ids and decoding against transformers on {verify_tokenizer(ckpt.path, stage)} prompts")

        vision_info = write_vision(ckpt, stage / "vision.safetensors")
        log(f"wrote vision tower: {vision_info['parameters'] / 1e6:.1f}M parameters, {vision_info['dtype']}")
        if mmproj:
            vision_info["mmproj"] = mmproj_filename()
            count = write_mmproj(ckpt, stage / vision_info["mmproj"])
            log(f"wrote {vision_info['mmproj']} for llama.cpp: {count} tensors")

        base = stage / "text-source.gguf"
        base_is_f32 = write_text_gguf(ckpt, base, log, progress)
        for quant in quant_names:
            if not (quant == "F32" and base_is_f32):
                log(f"quantizing decoder to {quant}")
                quantize(base, stage / f"text-{quant}.gguf", quant, threads)
        if "F32" in quant_names and base_is_f32:
            base.rename(stage / "text-F32.gguf")
        else:
            base.unlink()

        files = {
            f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(stage.iterdir())
        }
        import gguf
        import llama_cpp

        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "id": bundle_id(ckpt.path.resolve().name, files, ckpt.prompt_style),
            "model_version": ckpt.model_version,
            "prompt_style": ckpt.prompt_style,
            "source": {"path": str(ckpt.path.resolve()), "name": str(source)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "converter": {
                "ppvl_batch": __version__,
                "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
                "llama_cpp_python": llama_cpp.__version__,
                "seconds": round(time.monotonic() - started, 1),
            },
            "text": {
                "quants": {q: f"text-{q}.gguf" for q in quant_names},
                "default_quant": quant_names[0],
                "context_length": ckpt.text.max_position_embeddings,
                "vocab_size": ckpt.text.vocab_size,
                "tied_output": "lm_head.weight" not in ckpt.tensor_names(),
            },
            "vision": {"file": "vision.safetensors", **vision_info},
            "files": files,
        }
        # The manifest is written last: a folder without one is never taken for a bundle.
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _move_into_place(stage, out)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise OutputError(f"{out}: cannot write the bundle ({os.strerror(exc.errno)})") from exc
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"bundle ready: {out} ({', '.join(quant_names)}) in {time.monotonic() - started:.1f}s")
    return out


def add_mmproj(bundle: str | Path, log: Log = _no_log) -> Path:
    """Add the mmproj GGUF to a bundle converted without it, from the bundle's own vision weights
    (they are the checkpoint's, at its precision)."""
    from safetensors import safe_open

    from .bundle import Bundle
    from .checkpoint import text_hparams

    opened = Bundle.open(bundle)
    with safe_open(str(opened.vision_file), framework="pt") as st:
        sources = {n: (opened.vision_file, n) for n in st.keys()}
    name = mmproj_filename()
    partial = opened.path / f".{name}.partial-{os.getpid()}"
    try:
        count = _write_mmproj(sources, opened.config["vision_config"], opened.preprocessor,
                              text_hparams(opened.config).hidden_size, Path(opened.manifest["source"]["path"]).name, partial, "F16")
        os.replace(partial, opened.path / name)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest = opened.manifest
    manifest["vision"]["mmproj"] = name
    manifest["files"][name] = {"sha256": sha256_file(opened.path / name), "bytes": (opened.path / name).stat().st_size}
    # Replace the manifest in one rename: a reader never sees half of it.
    staged = opened.path / f".{MANIFEST}.partial-{os.getpid()}"
    staged.write_text(json.dumps(manifest, indent=2))
    _fsync_tree(opened.path)
    os.replace(staged, opened.path / MANIFEST)
    fsync_dir(opened.path)
    log(f"added {name} to {opened.path}: {count} tensors")
    return opened.path / name


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _move_into_place(stage: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`; an old bundle there is replaced only after
    the new one is complete."""
    _fsync_tree(stage)  # the files' data first, so a power cut cannot leave a bundle of holes
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(stage, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, out)
        fsync_dir(out.parent)


def _fsync_tree(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)
