"""`ppvl-ocr convert` and `ppvl-ocr inspect`: making and reading model bundles."""

from __future__ import annotations

import sys

import click

from ..errors import exit_codes_help
from .options import INTERRUPTED, MODEL, OK, OUTPUT, USAGE


@click.command(epilog=exit_codes_help([OK, USAGE, MODEL, OUTPUT, INTERRUPTED]))
@click.argument("source", metavar="CHECKPOINT")
@click.option("-o", "--output", "output", type=click.Path(file_okay=True, dir_okay=True),
              help="Bundle folder to create.")
@click.option("--quant", "quants", multiple=True, metavar="NAME",
              help="Decoder quantization: F32, F16, Q8_0, Q5_K_M, Q4_K_M (default), Q4_0. "
                   "Repeat for several in one bundle.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing bundle at OUTPUT (only once the new one is complete); "
                   "with --add-layout, its layout model.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for quantization.")
@click.option("--mmproj", is_flag=True,
              help="Also write the vision tower as llama.cpp's mmproj GGUF (mmproj-F16.gguf), "
                   "so llama.cpp can run the whole model for comparison.")
@click.option("--layout", "layout", metavar="LAYOUT",
              help="Also put a layout model into the bundle (a PP-DocLayoutV2/V3 folder in transformers format, "
                   "or a cached hub id): scan then parses documents block by block.")
@click.option("--add-layout", "add_layout", metavar="LAYOUT",
              help="Put a layout model into the existing bundle given as CHECKPOINT (no conversion).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def convert(source: str, output: str | None, quants: tuple[str, ...], overwrite: bool, threads: int | None,
            mmproj: bool, layout: str | None, add_layout: str | None, quiet: bool) -> None:
    """Convert a PaddleOCR-VL checkpoint into a model bundle.

    CHECKPOINT is a local folder of the Hugging Face checkpoint (PaddleOCR-VL v1, 1.5, 1.6 or 1.8,
    as PaddlePaddle published it or as transformers saved it), or a hub id such as
    PaddlePaddle/PaddleOCR-VL that is in the local Hugging Face cache (or downloadable). The
    version is read from the checkpoint's own metadata, else from its folder name, else from its
    chat template (docs/design.md section 1).

    The text decoder becomes a GGUF for llama.cpp (arch `paddleocr`), quantized in process; the
    vision encoder and projector stay at the checkpoint's precision. Nothing is written to OUTPUT
    until the bundle is complete. v1 pairs with the layout model PP-DocLayoutV2, 1.5 and 1.6
    with PP-DocLayoutV3, 1.8 with PP-DocLayoutV4 (transformers 5.25 or later).

    \b
    ppvl-ocr convert ./PaddleOCR-VL -o paddleocr-vl
    ppvl-ocr convert ./PaddleOCR-VL-1.5 -o vl15 --quant Q4_K_M --quant Q8_0 --layout ./PP-DocLayoutV3
    ppvl-ocr convert --add-layout ./PP-DocLayoutV3 vl15
    """
    from ..errors import UsageError

    say = (lambda m: None) if quiet else (lambda m: click.echo(f"ppvl-ocr: {m}", err=True))
    if add_layout is not None:
        if output or quants or mmproj or layout or threads:
            raise UsageError("--add-layout LAYOUT BUNDLE takes no -o, --quant, --threads, --mmproj or --layout")
        from ..convert.layout_model import add_layout as run_add_layout

        run_add_layout(source, add_layout, overwrite=overwrite, log=say)
        return
    if not output:
        raise UsageError("missing option -o / --output (the bundle folder to create)")
    from ..convert import convert as run_convert
    from ..convert import parse_quants

    names = parse_quants(quants)
    run_convert(source, output, names, overwrite=overwrite, threads=threads, mmproj=mmproj, layout=layout, log=say,
                progress=not quiet and sys.stderr.isatty())


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


@click.command(epilog=exit_codes_help([OK, USAGE, MODEL]))
@click.argument("bundle", metavar="BUNDLE", default="demo")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also check every file's sha256 against the manifest.")
def inspect(bundle: str, as_json: bool, verify: bool) -> None:
    """Show a bundle's architecture, parameters per component, files and precision.

    BUNDLE defaults to the bundled demo model.
    """
    import orjson

    from ..bundle import Bundle, resolve_model
    from ..bundle.inspection import describe, render_text
    from ..errors import ModelError

    opened = Bundle.open(resolve_model(bundle))
    info = describe(opened)
    if verify:
        bad = opened.verify()
        info["verified"] = not bad
        if bad:
            raise ModelError(f"{opened.path}: sha256 mismatch in {', '.join(bad)}; convert the model again")
    if as_json:
        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_text(info))
