"""`ppvl-ocr export`: an earlier scan's Markdown, searchable PDF, hOCR and ALTO from its JSONL records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import config_option
from ..errors import exit_codes_help
from .options import FAILED, INTERRUPTED, OK, OUTPUT, USAGE, document_output_options

EXPORT_EPILOG = """\b
Run it in the folder the scan ran in: the records name their documents by
the paths the scan was given, and the outputs mirror those paths under each
DIR as scan's do (DIR/<path>.md, .pdf, .hocr, .alto.xml). A document is
written from the newest record of each of its pages; a document with pages
not recorded gets its Markdown only (the pages recorded so far). An input
that changed since it was read (its sha256 is not its records') or is gone
is refused with a line, its outputs are not written, the others are, and
export exits with 1. An existing output file is replaced only with
--overwrite. The JSONL is only read: a scan may still be appending to it.

""" + exit_codes_help([OK, FAILED, USAGE, OUTPUT, INTERRUPTED])


@click.command(epilog=EXPORT_EPILOG)
@click.argument("records", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="JSONL")
@config_option
@click.option("--markdown", type=click.Path(file_okay=False, path_type=Path), envvar="PPVL_MARKDOWN", metavar="DIR",
              help="Write one Markdown file per document, DIR/<path>.md. [env PPVL_MARKDOWN]")
@document_output_options
@click.option("--password", envvar="PPVL_PASSWORD", metavar="TEXT",
              help="Password for encrypted input PDFs (prefer the environment variable). [env PPVL_PASSWORD]")
@click.option("--merge-tables/--no-merge-tables", default=True, show_default=True, envvar="PPVL_MERGE_TABLES",
              help="Layout-mode records: join a table split over a page break in the Markdown (as scan did). "
                   "[env PPVL_MERGE_TABLES]")
@click.option("--overwrite", is_flag=True, envvar="PPVL_OVERWRITE",
              help="Replace output files that exist. [env PPVL_OVERWRITE]")
@click.option("-q", "--quiet", is_flag=True, envvar="PPVL_QUIET",
              help="Nothing on stderr but errors that stop the run. [env PPVL_QUIET]")
@click.pass_context
def export(ctx: click.Context, records: Path, **opts: Any) -> None:
    """Write Markdown, searchable PDF, hOCR or ALTO from a scan's JSONL and its input files,
    without loading the model.

    \b
    ppvl-ocr scan ./docs -o out.jsonl
    ppvl-ocr export out.jsonl --pdf pdf/ --hocr hocr/ --alto alto/
    ppvl-ocr export state/journal.jsonl --pdf pdf/ --pdfa     # a scan with -o - --state state/

    JSONL is a scan's output file (or, for a scan to stdout, its --state DIR/journal.jsonl).
    """
    from ..batch.export import ExportOptions, export
    from ..batch.options import OutputOptions
    from ..batch.progress import Progress
    from ..layout.markdown import MarkdownOptions

    outputs = OutputOptions(markdown=opts["markdown"], pdf=opts["pdf"], hocr=opts["hocr"], alto=opts["alto"],
                            pdfa=opts["pdfa"], overwrite=opts["overwrite"])
    options = ExportOptions(records, outputs, opts["password"], MarkdownOptions(merge_tables=opts["merge_tables"]))
    result = export(options, Progress(quiet=opts["quiet"], log_interval=60))
    if not opts["quiet"]:
        click.echo(f"ppvl-ocr: {result.line()}", err=True)
    ctx.exit(result.exit_code)
