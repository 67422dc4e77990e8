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
    layout/                  optional (--layout): a PP-DocLayoutV2/V3/V4 checkpoint for document
                             parsing, as published (layout_model.py)

The pieces: checkpoint.py (a checkpoint folder, either layout, under canonical tensor names),
vocab.py (the GGUF's vocabulary), text_gguf.py (the decoder GGUF and quantization),
bundle/safetensors_io.py (vision.safetensors), mmproj.py (the optional mmproj GGUF),
layout_model.py (the optional layout model, also `convert --add-layout`); this module opens the
checkpoint, checks the tokenizer, writes the manifest and puts the bundle in place.

The text GGUF is written by our code with the `gguf` package (docs/design.md section 5), streaming
one tensor at a time, at the checkpoint's precision: bf16 matrices stay bf16, everything else
(norms, and every tensor of an f32 or f16 checkpoint) is f32. llama.cpp's own quantizer
(`llama_model_quantize`) then makes each requested type from it; an F32 request on an all-f32
source is that file itself. Everything is written into a hidden staging folder that is renamed
into place last, so an interrupted convert never leaves something that looks like a bundle.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..bundle import Log, is_bundle, mmproj_filename, no_log
from ..bundle.manifest import FileEntry, Manifest, Source, TextEntry, VisionEntry, bundle_id, write_manifest
from ..bundle.safetensors_io import PendingTensor, write_safetensors
from ..engine.tokenizer import TOKENIZER_FILES
from ..errors import ModelError, OutputError, UsageError
from ..files import fsync_dir, fsync_tree
from .checkpoint import Checkpoint, open_checkpoint, resolve_source
from .layout_model import layout_hint, read_layout_source, write_layout
from .text_gguf import DEFAULT_QUANT, QUANT_TYPES, quantize, write_text_gguf

# ---------------------------------------------------------------------------------------------
# Vision tower -> safetensors
# ---------------------------------------------------------------------------------------------


def vision_tensor_names(config: dict[str, Any]) -> set[str]:
    """Every tensor ppvl_batch.engine.vision.VisionTower loads for this config (built without memory)."""
    from ..engine.vision import VisionTower
    from ..hf import paddleocr_vl_config

    with torch.device("meta"):
        return set(VisionTower(paddleocr_vl_config(config)).state_dict())


def write_vision(ckpt: Checkpoint, out: Path) -> VisionEntry:
    """Vision encoder and projector under the names of ppvl_batch.engine.vision.VisionTower, at the
    checkpoint's own precision.

    Written tensor by tensor (safetensors_io): safetensors' save_file wants every tensor in memory
    at once and copies each to bytes, which would double the vision tower (0.9 GB) in RAM."""
    from safetensors import safe_open

    sources = {n: src for n, src in ckpt.tensor_names().items() if n.startswith(("visual.", "projector."))}
    missing = sorted(vision_tensor_names(ckpt.config) - set(sources))
    if missing:
        raise ModelError(f"{ckpt.path}: vision weights incomplete ({len(missing)} missing, e.g. {missing[0]})")

    def loader(file: Path, raw: str):
        def load() -> torch.Tensor:
            with safe_open(str(file), framework="pt") as st:
                return st.get_tensor(raw)

        return load

    tensors: dict[str, PendingTensor] = {}
    for name, (file, raw) in sources.items():
        with safe_open(str(file), framework="pt") as st:
            info = st.get_slice(raw)
            tensors[name] = PendingTensor(info.get_dtype(), list(info.get_shape()), loader(file, raw))
    write_safetensors(out, tensors)
    parameters = sum(math.prod(t.shape) for t in tensors.values())
    dtypes = sorted({t.dtype for t in tensors.values()})
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    dtype = names.get(dtypes[0], dtypes[0]) if len(dtypes) == 1 else "mixed"
    return VisionEntry(file=out.name, dtype=dtype, parameters=parameters)


# ---------------------------------------------------------------------------------------------
# Tokenizer: the bundle's prompts and text must be transformers' own
# ---------------------------------------------------------------------------------------------

# Free prompts convert checks besides the task prompts: whitespace of every kind, non-ASCII text.
CHECK_PROMPTS = (
    "  Read the\ttotal,  then the date:\n\n  ünïcödé 12,50 € 中文 \t",
    "\nline one\r\nline two  \u3000end ",
)


def _first_difference(ours: Sequence[object], theirs: Sequence[object]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))


def verify_tokenizer(checkpoint: Path, bundle: Path) -> int:
    """Prove that the prompt ids and the text our recognizer makes from `bundle` equal what
    transformers makes from `checkpoint`: every task prompt, free prompts with whitespace and
    non-ASCII text, one with an added token's text; a prompt with a special token's text must be
    refused. A difference is a ModelError naming its first position. Returns the prompts checked."""
    import random

    from ..engine.detokenize import Detokenizer
    from ..engine.prompt import IMAGE_PLACEHOLDER, TASKS
    from ..engine.tokenizer import PromptError, PromptTokenizer, load_tokenizer

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
            prompt = rendered.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * n)
            expected = reference(prompt, add_special_tokens=False)["input_ids"]
            got = before + [ours.placeholder_id] * n + after
            if got != expected:
                at = _first_difference(got, expected)
                raise ModelError(
                    f"prompt ids for {text!r} differ from transformers' at position {at}: ours "
                    f"{got[at:at + 3]}, transformers {expected[at:at + 3]}; "
                    "the bundle would not answer as the checkpoint")
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
        ids = [rng.choice(favoured) if favoured and rng.random() < 0.5 else rng.randrange(size)
               for _ in range(rng.randint(1, 24))]
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


def convert(
    source: str,
    out: str | Path,
    quants: tuple[str, ...] | list[str] = (DEFAULT_QUANT,),
    *,
    overwrite: bool = False,
    threads: int | None = None,
    mmproj: bool = False,
    layout: str | None = None,
    log: Log = no_log,
    progress: bool = False,
) -> Path:
    """Convert a PaddleOCR-VL checkpoint (folder or hub id) into a bundle at `out`; `mmproj` adds
    the vision tower as llama.cpp's mmproj GGUF too, `layout` a layout model (folder or hub id)."""
    quant_names = parse_quants(quants)
    out = Path(out)
    _check_destination(out, overwrite)
    ckpt = open_checkpoint(resolve_source(source))
    ckpt.tensor_names()  # fail on unreadable shards before any work
    if layout is not None:
        read_layout_source(layout)  # ... and on a wrong layout folder
    started = time.monotonic()

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        log(f"converting {ckpt.path} (PaddleOCR-VL {ckpt.model_version}, from the {ckpt.version.source}; "
            f"prompt style {ckpt.prompt_style})")
        for note in ckpt.version.passed_over:
            log(f"warning: version not taken from it: {note}")
        (stage / "config.json").write_text(json.dumps(ckpt.config, indent=2), encoding="utf-8")
        (stage / "preprocessor_config.json").write_text(json.dumps(ckpt.preprocessor, indent=2), encoding="utf-8")
        # The tokenizer files as the checkpoint has them: transformers loads the bundle's tokenizer
        # exactly as it loads the checkpoint's (docs/prompts.md).
        for name in TOKENIZER_FILES:
            if (ckpt.path / name).is_file():
                shutil.copyfile(ckpt.path / name, stage / name)
        if not (stage / "chat_template.jinja").is_file():
            (stage / "chat_template.jinja").write_text(ckpt.chat_template, encoding="utf-8")
        log(f"checked prompt ids and decoding against transformers on {verify_tokenizer(ckpt.path, stage)} prompts")

        vision_entry = write_vision(ckpt, stage / "vision.safetensors")
        assert vision_entry.parameters is not None  # write_vision counts them
        log(f"wrote vision tower: {vision_entry.parameters / 1e6:.1f}M parameters, {vision_entry.dtype}")
        if mmproj:
            from .mmproj import write_mmproj

            vision_entry = dataclasses.replace(vision_entry, mmproj=mmproj_filename())
            count = write_mmproj(ckpt, stage / mmproj_filename())
            log(f"wrote {mmproj_filename()} for llama.cpp: {count} tensors")

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

        files = {f.name: FileEntry.of(f) for f in sorted(stage.iterdir())}
        layout_entry = None
        if layout is not None:
            layout_entry, layout_files = write_layout(layout, stage, ckpt.model_version, log)
            files = dict(sorted({**files, **layout_files}.items()))
        else:
            log(layout_hint(ckpt.model_version, out))
        manifest = Manifest(
            id=bundle_id(ckpt.path.resolve().name, files, ckpt.prompt_style),
            model_version=ckpt.model_version,
            model_version_source=ckpt.version.source,
            prompt_style=ckpt.prompt_style,
            source=Source(path=str(ckpt.path.resolve()), name=str(source)),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            converter=_converter(time.monotonic() - started),
            text=TextEntry(
                quants={q: f"text-{q}.gguf" for q in quant_names},
                default_quant=quant_names[0],
                context_length=ckpt.text.max_position_embeddings,
                vocab_size=ckpt.text.vocab_size,
                tied_output="lm_head.weight" not in ckpt.tensor_names(),
            ),
            vision=vision_entry,
            layout=layout_entry,
            files=files,
        )
        # The manifest is written last: a folder without one is never taken for a bundle.
        write_manifest(stage, manifest)
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


def _converter(seconds: float) -> dict[str, Any]:
    """The manifest's `converter` entry: what made the bundle, and how long it took."""
    import gguf

    from ..engine.llama import binding_version

    return {
        "ppvl_batch": __version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "llama_cpp_python": binding_version(),
        "seconds": round(seconds, 1),
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _move_into_place(stage: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`. An old bundle there is renamed aside first and
    put back if the new one cannot take its place, so it is never lost; it is deleted only once
    the new one is in place."""
    fsync_tree(stage)  # the files' data first, so a power cut cannot leave a bundle of holes
    if not out.exists():
        os.rename(stage, out)
        fsync_dir(out.parent)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
