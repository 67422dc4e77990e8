"""The GGUF's vocabulary: the checkpoint's SentencePiece pieces and added tokens, as llama.cpp reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import ModelError
from .checkpoint import Checkpoint


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

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf makes the class at import
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
