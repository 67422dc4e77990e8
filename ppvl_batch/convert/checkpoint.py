"""Reading a PaddleOCR-VL checkpoint as PaddlePaddle or transformers saved it.

Both layouts of docs/design.md section 1 are mapped onto one set of canonical tensor names:

    text.<rest>      decoder weights      (`model.<rest>` or `model.language_model.<rest>`)
    lm_head.weight   output projection    (absent when the checkpoint ties it to the embeddings)
    visual.<rest>    vision tower          (`visual.<rest>` or `model.visual.<rest>`)
    projector.<rest> mlp_AR projector      (`mlp_AR.<rest>` or `model.projector.<rest>`)

Tensors are read one at a time (safetensors is memory-mapped), so nothing here holds the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .versions import ModelVersion, detect_version

# Vision tensors the reference implementation never uses.
_UNUSED = ("packing_position_embedding", "vision_model.head")

_RENAMES = (
    ("model.language_model.", "text."),
    ("model.visual.", "visual."),
    ("model.projector.", "projector."),
    ("mlp_AR.", "projector."),
    ("visual.", "visual."),
    ("model.", "text."),
    ("lm_head.", "lm_head."),
)

DEFAULT_MROPE_SECTION = [16, 24, 24]


def canonical_name(name: str) -> str | None:
    """The canonical name of a checkpoint tensor, or None for tensors the model does not use."""
    if any(part in name for part in _UNUSED):
        return None
    for prefix, new in _RENAMES:
        if name.startswith(prefix):
            return new + name[len(prefix):]
    return None


@dataclass(frozen=True)
class TextHParams:
    """The decoder hyper-parameters, whichever config layout they came from."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]
    max_position_embeddings: int
    tie_word_embeddings: bool


@dataclass
class Checkpoint:
    """A local PaddleOCR-VL checkpoint folder."""

    path: Path
    config: dict[str, Any]
    text: TextHParams
    vision_config: dict[str, Any]
    preprocessor: dict[str, Any]
    chat_template: str
    tokenizer_config: dict[str, Any]
    weight_files: list[Path] = field(default_factory=list)

    @cached_property
    def prompt_style(self) -> str:
        """`v1` ends the prompt with 'Assistant: ', `v1.5` with 'Assistant:\\n' (docs/design.md section 2)."""
        from ..engine.prompt import detect_prompt_style
        from ..engine.tokenizer import PromptTokenizer

        return detect_prompt_style(PromptTokenizer.load(self.path).render("OCR:"))

    @cached_property
    def version(self) -> ModelVersion:
        """The release and where it was read: the checkpoint's metadata first (convert/versions.py)."""
        return detect_version(self.path, self.prompt_style)

    @property
    def model_version(self) -> str:
        return self.version.version

    def tensor_names(self) -> dict[str, tuple[Path, str]]:
        """canonical name -> (file, name in that file), for every tensor the model uses."""
        from safetensors import safe_open

        names: dict[str, tuple[Path, str]] = {}
        for f in self.weight_files:
            try:
                with safe_open(str(f), framework="pt") as st:
                    for raw in st.keys():
                        canon = canonical_name(raw)
                        if canon is not None:
                            names[canon] = (f, raw)
            except Exception as exc:  # safetensors raises its own error types for damaged files
                raise ModelError(f"{f}: not a readable safetensors file ({_first_line(exc)})") from exc
        return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read JSON ({_first_line(exc)})") from exc


def text_hparams(config: dict[str, Any]) -> TextHParams:
    """Decoder hyper-parameters from a flat (PaddlePaddle) or nested (transformers 5) config."""
    text = config.get("text_config") or config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta") or text.get("rope_theta") or config.get("rope_theta") or 500000.0
    # docs/design.md: a missing mrope_section means the default; never write empty sections.
    section = list(rope.get("mrope_section") or DEFAULT_MROPE_SECTION)
    heads = int(text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    if sum(section) * 2 != head_dim:
        raise ModelError(f"mrope_section {section} does not cover head_dim {head_dim} (its sum must be head_dim/2)")
    return TextHParams(
        vocab_size=int(text["vocab_size"]),
        hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]),
        num_hidden_layers=int(text["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
        rope_theta=float(theta),
        mrope_section=section,
        max_position_embeddings=int(text.get("max_position_embeddings", 131072)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _chat_template(path: Path, tokenizer_config: dict[str, Any]) -> str:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template_json = path / "chat_template.json"
    if template_json.is_file():
        return _read_json(template_json)["chat_template"]
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str) and template:
        return template
    raise ModelError(f"{path}: no chat template (chat_template.jinja or tokenizer_config.json 'chat_template')")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Validate and open a local checkpoint folder. Raises ModelError with a one-line reason."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such checkpoint folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    config = _read_json(config_file)
    if config.get("model_type") != "paddleocr_vl" and "PaddleOCRVLForConditionalGeneration" not in config.get(
        "architectures", []
    ):
        raise ModelError(f"{path}: not a PaddleOCR-VL checkpoint (model_type {config.get('model_type')!r})")
    if "vision_config" not in config:
        raise ModelError(f"{path}: config.json has no vision_config")
    if not (path / "tokenizer.model").is_file():
        raise ModelError(f"{path}: tokenizer.model is missing "
                         "(the SentencePiece tokenizer is needed for the GGUF vocab)")
    tokenizer_config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    preprocessor_file = path / "preprocessor_config.json"
    if not preprocessor_file.is_file():
        raise ModelError(f"{path}: preprocessor_config.json is missing")

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / name for name in _read_json(index).get("weight_map", {}).values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: no *.safetensors weights")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{path}: weight shard missing: {missing[0]}")

    vision = dict(config["vision_config"])
    if vision.get("model_type") == "paddleocr_vl":  # the PaddlePaddle repo names the sub-config like the whole
        vision["model_type"] = "paddleocr_vl_vision"
    return Checkpoint(
        path=path,
        config=config,
        text=text_hparams(config),
        vision_config=vision,
        preprocessor=_read_json(preprocessor_file),
        chat_template=_chat_template(path, tokenizer_config),
        tokenizer_config=tokenizer_config,
        weight_files=files,
    )


def resolve_source(source: str) -> Path:
    """A local folder as is; a hub repo id ("PaddlePaddle/PaddleOCR-VL") from the local Hugging Face
    cache, or downloaded when the network allows. The user asked for the repo id, so fetching it is
    theirs to allow; a failure says how to get the files by hand."""
    local = Path(source).expanduser()
    if local.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return local
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, local_files_only=True))
        except Exception:
            return Path(snapshot_download(source))
    except Exception as exc:
        raise ModelError(
            f"{source}: not a local folder, not in the Hugging Face cache, and could not be downloaded "
            f"({_first_line(exc)}); download it elsewhere with `hf download {source} --local-dir DIR` "
            "and run `ppvl-ocr convert DIR -o BUNDLE`"
        ) from exc
