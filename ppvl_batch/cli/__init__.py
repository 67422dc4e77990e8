"""ppvl-ocr: the command line. Each command is a thin layer over the library modules.

    __init__.py  the `ppvl-ocr` group (`main`, the entry point): logging, errors -> one line and an exit code
    options.py   what several commands share: the model options and loading a Recognizer from them
    model.py     convert, inspect: making and reading model bundles
    scan.py      scan: documents -> JSONL records and Markdown (searchable PDF, hOCR, ALTO)
    export.py    export: those document outputs again from a scan's JSONL, without the model
    serve.py     serve, ask: the OpenAI-compatible server and its client

Commands import what they run inside their functions, so `--help` does not import torch.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import ExitCode, PPVLError, exit_codes_help
from . import export, model, scan, serve


class PPVLGroup(click.Group):
    """Turns our errors into one line on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PPVLError as exc:
            click.echo(f"ppvl-ocr: error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("ppvl-ocr: interrupted", err=True)
            ctx.exit(int(ExitCode.INTERRUPTED))


@click.group(cls=PPVLGroup, epilog=exit_codes_help(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ppvl-ocr")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for llama.cpp's own).")
def main(verbose: int) -> None:
    """Batch document OCR with PaddleOCR-VL: PyTorch vision, llama.cpp decoding, on a CPU.

    \b
    ppvl-ocr scan ./docs -o out.jsonl          OCR folders, PDFs and images
    ppvl-ocr export out.jsonl --pdf pdf/       searchable PDF, hOCR, ALTO from the records
    ppvl-ocr convert CHECKPOINT -o BUNDLE      make a model bundle from PaddleOCR-VL
    ppvl-ocr inspect BUNDLE                    what a bundle holds
    ppvl-ocr serve --model BUNDLE              OpenAI-compatible server
    ppvl-ocr ask --image page.png              send a page to a server
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="ppvl-ocr: %(message)s",
        stream=sys.stderr,
    )
    if verbose > 1:
        import os

        os.environ["PPVL_LLAMA_LOG"] = "1"
    if not verbose:
        # transformers warns about config keys it does not know (e.g. mrope_section, which it
        # does use); for a command line tool that is noise on stderr.
        from ..hf import quiet_logging

        quiet_logging()


for command in (model.convert, model.inspect, scan.scan, export.export, serve.serve, serve.ask):
    main.add_command(command)
