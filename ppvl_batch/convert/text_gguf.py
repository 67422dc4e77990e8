"""The ERNIE decoder -> a GGUF of arch `paddleocr` (docs/design.md section 5), and llama.cpp's quantizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bundle import Log, no_log
from ..errors import ModelError
from .checkpoint import Checkpoint
from .vocab import build_vocab

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

    def loader(file: Path, raw: str, rows: slice | None = None) -> Callable[[], torch.Tensor]:
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
        parts: list[tuple[str, slice | None]]
        if ".qkv_proj." in hf_name:
            bounds = [("q_proj", 0, q_rows), ("k_proj", q_rows, q_rows + kv_rows),
                      ("v_proj", q_rows + kv_rows, q_rows + 2 * kv_rows)]
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


def write_text_gguf(ckpt: Checkpoint, out: Path, log: Log = no_log, progress: bool = False) -> bool:
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
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.uint16), nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType.BF16)
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
    from ..engine.llama import quantize_model

    if not quantize_model(src, dst, QUANT_TYPES[quant], threads):
        raise ModelError(f"llama.cpp could not quantize the decoder to {quant}")
