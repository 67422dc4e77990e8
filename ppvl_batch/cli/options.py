"""What several commands share: exit codes they list, the options that load a model, and loading it;
the document output options of scan and export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import ExitCode

OK, FAILED, USAGE, MODEL, OUTPUT, INTERRUPTED = ExitCode  # the codes each command lists in --help


def model_options(func: Callable) -> Callable:
    """The options that load a model, shared by every command that runs one."""
    options = [
        click.option("--model", "-m", envvar="PPVL_MODEL", metavar="BUNDLE",
                     help="Model bundle folder (from `ppvl-ocr convert`); `demo` or unset: the bundled demo model. "
                     "[env PPVL_MODEL]"),
        click.option("--quant", envvar="PPVL_QUANT", metavar="NAME",
                     help="Decoder quantization to use when the bundle has several (default: the bundle's first). "
                     "[env PPVL_QUANT]"),
        click.option("--device", envvar="PPVL_DEVICE", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True,
                     help="Where the vision encoder runs. [env PPVL_DEVICE]"),
        click.option("--vision-dtype", envvar="PPVL_VISION_DTYPE", type=click.Choice(["auto", "fp32", "bf16", "int8"]),
                     default="auto", show_default=True,
                     help="Vision precision; auto = bf16 where the CPU/GPU computes it natively "
                     "(AVX512-BF16, AMX, CUDA), "
                     "else fp32 compute on bf16-held weights (same numbers as fp32, half the memory); "
                     "int8 = auto with int8 weights (see README). [env PPVL_VISION_DTYPE]"),
        click.option("--threads", envvar="PPVL_THREADS", type=click.IntRange(1), default=None,
                     help="CPU threads for vision and decoder (default: physical cores). [env PPVL_THREADS]"),
        click.option("--n-gpu-layers", envvar="PPVL_N_GPU_LAYERS", type=click.IntRange(0), default=0, show_default=True,
                     help="Decoder layers offloaded to the GPU (llama-cpp-python built with CUDA/Metal). "
                     "[env PPVL_N_GPU_LAYERS]"),
        click.option("--kv-type", envvar="PPVL_KV_TYPE", type=click.Choice(["f16", "f32", "q8_0"]), default="f16",
                     show_default=True, help="llama.cpp KV cache precision: f32 (with flash attention off) gives "
                     "transformers' numerics, q8_0 halves the cache again. [env PPVL_KV_TYPE]"),
        click.option("--ctx-size", envvar="PPVL_CTX_SIZE", type=click.IntRange(256), default=None,
                     help="llama.cpp context in tokens (default: the largest page, or layout block, + max new tokens). "
                     "[env PPVL_CTX_SIZE]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def document_output_options(func: Callable) -> Callable:
    """--pdf, --pdfa, --hocr, --alto: the archival outputs (outputs/, docs/archival-outputs.md)."""
    folder = click.Path(file_okay=False, path_type=Path)
    options = [
        click.option("--pdf", type=folder, envvar="PPVL_PDF", metavar="DIR",
                     help="Also write one searchable PDF per document, DIR/<path>.pdf (the --markdown path rule): a "
                          "PDF keeps its pages untouched and gets an invisible text layer, an image becomes one page "
                          "per frame at its physical size. Written once every page of the document is recorded. "
                          "[env PPVL_PDF]"),
        click.option("--pdfa", is_flag=True, envvar="PPVL_PDFA",
                     help="With --pdf: write PDF/A-2b (needs pip install 'ppvl-batch[pdfa]'). A document that cannot "
                          "be PDF/A (an encrypted input, say) gets the plain PDF, a line saying why, and exit 4. "
                          "[env PPVL_PDFA]"),
        click.option("--hocr", type=folder, envvar="PPVL_HOCR", metavar="DIR",
                     help="Also write one hOCR 1.2 file per document, DIR/<path>.hocr. [env PPVL_HOCR]"),
        click.option("--alto", type=folder, envvar="PPVL_ALTO", metavar="DIR",
                     help="Also write one ALTO 4.4 file per document, DIR/<path>.alto.xml. [env PPVL_ALTO]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_bundle(model: Any):
    """The bundle the --model option names (a Bundle already opened is kept); says so on stderr
    when the demo model is used."""
    from ..bundle import GET_A_MODEL, Bundle, resolve_model

    if isinstance(model, Bundle):
        return model
    if model in (None, "", "demo"):
        click.echo(f"ppvl-ocr: using the small bundled demo model; for real documents {GET_A_MODEL}", err=True)
    return Bundle.open(resolve_model(model or None))


def load_recognizer(
    model: Any, quant: str | None, device: str, vision_dtype: str, threads: int | None,
    n_gpu_layers: int, kv_type: str, ctx_size: int | None, **extra: Any,
):
    """A Recognizer from the shared model options (`model`: a --model value or an opened Bundle)."""
    from ..engine.recognizer import Recognizer

    return Recognizer(
        open_bundle(model), quant=quant, device=device, dtype=vision_dtype, threads=threads,
        n_gpu_layers=n_gpu_layers, kv_type=kv_type, n_ctx=ctx_size, **extra,
    )
