"""`ppvl-ocr scan`: documents -> JSONL records (and Markdown, searchable PDF, hOCR, ALTO), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..batch.review import DEFAULT_REVIEW_BELOW, DEFAULT_REVIEW_MIN_TOKEN
from ..config import config_option
from ..engine.prompt import TASKS
from ..errors import exit_codes_help
from .options import document_output_options, load_recognizer, model_options, open_bundle


def _parse_pages(ctx: click.Context, param: click.Parameter, value: str | None):
    from ..documents.pages import PageRanges

    try:
        return PageRanges.parse(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


SCAN_EPILOG = """\b
Resume: re-running the same command skips every page already in the output.
A page's checkpoint key is the file's sha256, the page number and all that
changes the answer (model and quant, --task/--prompt, --min/--max-pixels,
--dpi, --max-new-tokens; not --review-below/--review-min-token): a changed
file is read again, a moved one is not.
The output file is itself the checkpoint (a partial last line left by a
crash is cut off and its page redone); with -o - give --state DIR to resume.
A lock (OUTPUT.lock or DIR/lock) stops two runs writing one output; a lock
left by a dead process is taken over. Outputs may not lie inside an input
folder, and an existing file that is not a ppvl-ocr output is never
overwritten without --overwrite.

\b
Document outputs (--markdown, --pdf, --hocr, --alto) are written from the
records once every page of a document is recorded, in this run or earlier
ones (--pages, resume, --retry-failed), and again when a page of it gets a
newer record; one asked for the first time is written for every finished
document without reading a page again. A document whose output cannot be
written (an encrypted PDF without --password, a damaged one) keeps its
records; a line and the summary say why, and the run exits with 4.
`ppvl-ocr export` writes them later from the JSONL, without the model.

\b
Records (one JSON object per line, written and flushed page by page):
  source sha256 page page_count width height task prompt text finish_reason
  status (ok|error) error {type, message} image_tokens output_tokens
  seconds model key confidence min_token_prob needs_review review_reasons
  text_source lines positions (text lines with boxes in pixels of the
  rendered page, width x height: "spotting", "estimated" from the ink, or
  null), and when they apply: page_size_pt (PDF pages), blank (true: no
  ink, not read),
  warnings (e.g. "repaired: ..." for a damaged PDF), same_as (the file with
  the same content whose record this one copies), text_source (model|pdf),
with the text layer (--text-layer) lines positions (pdf) confidence (null).
A page taken from its text layer has a key of its own.
In layout mode (a bundle with a layout model, unless --no-layout) task is
"layout", text is the page's Markdown, and records add layout_model and
blocks (id order label bbox score task text format image finish_reason
output_tokens error polygon confidence min_token_prob lines); the key also covers the
layout model and its options. confidence is the geometric mean of the
probabilities of the answer's tokens (null for blank, copied and failed
pages); needs_review is true when review_reasons name a rule: repetition
length empty unparsed_table unparsed_spotting low_confidence
low_min_token_prob (README "Which pages to check").
A document that cannot be opened gets one record with page null. Error types:
  missing unreadable empty unsupported corrupt truncated encrypted too_large
  recognition internal worker_crashed (--ray) no_text_layer (--text-layer only)
Hashes are cached in OUTPUT.hashes (or DIR/journal.jsonl.hashes) by path,
size, mtime, ctime and inode: a re-run reads only new and changed files.

\b
Settings: every option can also come from an environment variable (shown
as [env ...]) or from a TOML file (./ppvl-ocr.toml or --config FILE) with
top-level keys for all commands and a [scan] table, e.g.
  model = "models/paddleocr-vl"
  [scan]
  output = "ocr.jsonl"
  batch-size = 8
The command line wins over the environment, which wins over the file.

""" + exit_codes_help()


@click.command(epilog=SCAN_EPILOG)
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@config_option
@click.option("-o", "--output", default="-", show_default=True, envvar="PPVL_OUTPUT", metavar="FILE",
              help="JSONL records, one per page; `-` is stdout, which then carries nothing else. [env PPVL_OUTPUT]")
@click.option("--markdown", type=click.Path(file_okay=False, path_type=Path), envvar="PPVL_MARKDOWN", metavar="DIR",
              help="Also write one DIR/<path>.md per document (e.g. docs/a.pdf -> DIR/docs/a.pdf.md; paths "
                   "outside the working directory go under DIR/_abs/), atomically, once the document is complete. "
                   "[env PPVL_MARKDOWN]")
@document_output_options
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), envvar="PPVL_STATE", metavar="DIR",
              help="Checkpoint folder for -o -, so that stdout runs resume too (a file output is its own "
                   "checkpoint). [env PPVL_STATE]")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), envvar="PPVL_SUMMARY_JSON",
              metavar="FILE", help="Write the end-of-run summary as JSON, for scripts. [env PPVL_SUMMARY_JSON]")
@click.option("-0", "--null", "null_separated", is_flag=True, envvar="PPVL_NULL",
              help="Paths on stdin (INPUT `-`) are NUL-separated, as `find -print0` writes them. [env PPVL_NULL]")
@click.option("--include-hidden", is_flag=True, envvar="PPVL_INCLUDE_HIDDEN",
              help="Walk into hidden files and folders (names starting with a dot). [env PPVL_INCLUDE_HIDDEN]")
@click.option("--pages", callback=_parse_pages, envvar="PPVL_PAGES", metavar="RANGES",
              help="Only these pages of each document, e.g. 1-3,7,10- (1-based). [env PPVL_PAGES]")
@click.option("--dpi", type=click.FloatRange(min=1, max=2400), envvar="PPVL_DPI",
              help="Render PDF pages at this resolution (default: per page, the one that fills the model's "
                   "--max-pixels). [env PPVL_DPI]")
@click.option("--password", envvar="PPVL_PASSWORD", metavar="TEXT",
              help="Password for encrypted PDFs (prefer the environment variable). [env PPVL_PASSWORD]")
@click.option("--task", type=click.Choice(list(TASKS)), default="ocr", show_default=True, envvar="PPVL_TASK",
              help="What to read: text, tables (HTML), formulas (LaTeX), charts, text with positions "
                   "(spotting, 1.5+), seals (1.5+). [env PPVL_TASK]")
@click.option("--prompt", envvar="PPVL_PROMPT", metavar="TEXT",
              help="A free prompt instead of the task's own. [env PPVL_PROMPT]")
@click.option("--max-new-tokens", type=click.IntRange(1), default=1024, show_default=True,
              envvar="PPVL_MAX_NEW_TOKENS", help="Longest answer per page; longer ones end with "
                                                 "finish_reason length. [env PPVL_MAX_NEW_TOKENS]")
@click.option("--min-pixels", type=click.IntRange(1), envvar="PPVL_MIN_PIXELS",
              help="Smallest image the model sees (default: the bundle's). [env PPVL_MIN_PIXELS]")
@click.option("--max-pixels", type=click.IntRange(1), envvar="PPVL_MAX_PIXELS",
              help="Largest image the model sees (default: the bundle's). [env PPVL_MAX_PIXELS]")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True, envvar="PPVL_BATCH_SIZE",
              help="Pages per vision forward pass. [env PPVL_BATCH_SIZE]")
@click.option("--parallel", type=click.IntRange(1, 64), envvar="PPVL_PARALLEL",
              help="Pages (in layout mode: blocks) decoded together in the one llama.cpp context (one batched "
                   "step for all; each needs its own KV cache). Default: 1 for whole pages, 4 in layout mode, "
                   "where blocks are short answers (1.5-2x the pages per minute of 1 on 2 cores, README "
                   "\"Performance\"). [env PPVL_PARALLEL]")
@click.option("--retry-failed", is_flag=True, envvar="PPVL_RETRY_FAILED",
              help="Read again the pages that failed in earlier runs (otherwise skipped and counted). A file "
                   "that could not be opened is tried on every run anyway, but records a new error only with "
                   "this flag. [env PPVL_RETRY_FAILED]")
@click.option("--overwrite", is_flag=True, envvar="PPVL_OVERWRITE",
              help="Start over: empty the output and its checkpoint, replace Markdown files. [env PPVL_OVERWRITE]")
@click.option("--skip-blank/--no-skip-blank", default=True, show_default=True, envvar="PPVL_SKIP_BLANK",
              help="Record pages with no ink (judged from the pixels) as blank without running the model; "
                   "--no-skip-blank reads them, also those recorded blank before. [env PPVL_SKIP_BLANK]")
@click.option("--text-layer", type=click.Choice(["auto", "ignore", "only"]), default="auto", show_default=True,
              envvar="PPVL_TEXT_LAYER",
              help="PDF pages whose own text layer is trustworthy (visible, decodable, covering the page's ink): "
                   "auto takes their text from the file, the model reads the others (in layout mode: text "
                   "blocks from the file, tables, formulas and the rest by the model); ignore reads every page "
                   "with the model; only never runs the model (whole pages; the others get a no_text_layer "
                   "error that a run without `only` reads). Only for --task ocr. [env PPVL_TEXT_LAYER]")
@click.option("--rehash", is_flag=True, envvar="PPVL_REHASH",
              help="Read every file to hash it, ignoring the hash cache (OUTPUT.hashes). [env PPVL_REHASH]")
@click.option("-q", "--quiet", is_flag=True, envvar="PPVL_QUIET",
              help="Nothing on stderr but errors that stop the run. [env PPVL_QUIET]")
@click.option("--log-interval", type=click.FloatRange(0), default=60, show_default=True, envvar="PPVL_LOG_INTERVAL",
              metavar="SECONDS", help="When stderr is not a terminal: a progress line this often (a terminal "
                                      "gets a progress bar). [env PPVL_LOG_INTERVAL]")
@click.option("--ray", "ray_address", envvar="PPVL_RAY", metavar="ADDRESS",
              help="Read the pages on a Ray cluster: `auto` (the cluster of this machine, or RAY_ADDRESS), `local` "
                   "(a throwaway Ray on this machine) or HOST:PORT. Needs pip install 'ppvl-batch[ray]'; the bundle "
                   "and the inputs must be at the same path on every node, and in layout mode the --markdown or "
                   "--images folder too (the workers save the image blocks). [env PPVL_RAY]")
@click.option("--ray-workers", envvar="PPVL_RAY_WORKERS", metavar="N|MIN:MAX",
              help="Workers, fixed or autoscaling (default: as many as the cluster's CPUs fit). [env PPVL_RAY_WORKERS]")
@click.option("--ray-cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
              envvar="PPVL_RAY_CPUS_PER_WORKER", help="CPUs per worker, also its torch and llama.cpp threads. "
                                                     "[env PPVL_RAY_CPUS_PER_WORKER]")
@click.option("--ray-gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              envvar="PPVL_RAY_GPUS_PER_WORKER", help="GPUs per worker (with --device cuda). "
                                                     "[env PPVL_RAY_GPUS_PER_WORKER]")
@click.option("--ray-pages-per-task", type=click.IntRange(1), default=2, show_default=True,
              envvar="PPVL_RAY_PAGES_PER_TASK", help="Pages a worker reads per task (one vision batch): records arrive "
                                                    "a task at a time, and a dead worker's task is redone. "
                                                    "[env PPVL_RAY_PAGES_PER_TASK]")
@click.option("--ray-task-retries", type=click.IntRange(0), default=3, show_default=True,
              envvar="PPVL_RAY_TASK_RETRIES", help="Tries after the first for a page whose worker dies; then the page "
                                                  "gets a worker_crashed error record. [env PPVL_RAY_TASK_RETRIES]")
# -- layout mode (document parsing, README "Document parsing"; batch/layout_mode.py) --
@click.option("--layout/--no-layout", "layout", default=None, envvar="PPVL_LAYOUT",
              help="Read pages block by block with the bundle's layout model (default: when the bundle has one); "
                   "--no-layout reads whole pages. [env PPVL_LAYOUT]")
@click.option("--charts", is_flag=True, envvar="PPVL_CHARTS",
              help="Layout mode: read chart blocks as tables (otherwise saved as images). [env PPVL_CHARTS]")
@click.option("--seals", is_flag=True, envvar="PPVL_SEALS",
              help="Layout mode: read seal blocks (1.5+ bundles; otherwise saved as images). [env PPVL_SEALS]")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), envvar="PPVL_IMAGES", metavar="DIR",
              help="Layout mode: save image blocks under DIR/<path>_images/ (default: beside the Markdown, "
                   "<markdown>/<path>_images/; not saved without either). [env PPVL_IMAGES]")
@click.option("--layout-threshold", type=click.FloatRange(0, 1), envvar="PPVL_LAYOUT_THRESHOLD",
              help="Layout mode: one detection score threshold for every label (default: the pipeline's, "
                   "0.3 for PP-DocLayoutV3, per label 0.4-0.5 for V2). [env PPVL_LAYOUT_THRESHOLD]")
@click.option("--merge-tables/--no-merge-tables", default=True, show_default=True, envvar="PPVL_MERGE_TABLES",
              help="Layout mode: join a table split over a page break in the Markdown. [env PPVL_MERGE_TABLES]")
# -- which pages need review (README "Which pages to check"; batch/review.py) --
@click.option("--review-below", type=click.FloatRange(0, 1), default=DEFAULT_REVIEW_BELOW, show_default=True,
              envvar="PPVL_REVIEW_BELOW", metavar="P",
              help="A page read with a confidence (geometric mean of its token probabilities) below P needs review. "
                   "Token probabilities are not calibrated: check P on your documents, model and quant with "
                   "tools/calibrate_review.py. 0 turns the rule off. [env PPVL_REVIEW_BELOW]")
@click.option("--review-min-token", type=click.FloatRange(0, 1), default=DEFAULT_REVIEW_MIN_TOKEN, show_default=True,
              envvar="PPVL_REVIEW_MIN_TOKEN", metavar="P",
              help="A page with a token of probability below P needs review (0: off). [env PPVL_REVIEW_MIN_TOKEN]")
@model_options
@click.pass_context
def scan(ctx: click.Context, inputs: tuple[str, ...], **opts: Any) -> None:
    """OCR documents into JSONL records (and Markdown): folders, PDFs, images, stdin lists.

    \b
    ppvl-ocr scan ./docs -o out.jsonl
    find /archive -name '*.pdf' -newer stamp | ppvl-ocr scan - -o out.jsonl --markdown md/
    find /archive -name '*.pdf' -print0 | ppvl-ocr scan -0 - -o out.jsonl
    ppvl-ocr scan scan.pdf --pages 3-7 --task table -o - | jq .text

    INPUT is a file, a folder (walked recursively in sorted order, picking PDF, PNG, JPEG,
    TIFF, WebP, BMP and GIF files, skipping hidden names unless --include-hidden, following
    symlinks but never in a loop), a glob pattern ('scans/**/*.pdf'), or `-` for paths read
    from stdin, one per line (NUL-separated with -0). A file named explicitly is always tried;
    the same file reached twice is read once. Every page of a PDF and every frame of a TIFF is
    a page; GIF and WebP give their first frame; any colour mode becomes RGB, EXIF rotation is
    applied. A file that is missing, empty, corrupt, truncated, encrypted or not a document gets
    an error record and the run goes on.

    Pages are rendered ahead of the model in a background thread and read through one model for
    the whole run. A summary goes to stderr at the end. Ctrl-C or SIGTERM finishes the page in
    flight and exits with 130 (press again to stop at once); re-running resumes. With --ray the
    pages are read by Ray workers instead, whole or in layout mode, with the same records
    (README, "Running on a Ray cluster"); Ctrl-C then stops at once, and the pages the workers
    were reading are read again by the next run.
    """
    import warnings

    from ..batch.local import Scan
    from ..batch.options import ScanOptions, write_summary_json
    from ..errors import UsageError

    # PIL warns about each damaged file it still decodes; the records say what failed
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

    model = {k: opts.pop(k) for k in ("model", "quant", "device", "vision_dtype", "threads", "n_gpu_layers", "kv_type",
                                      "ctx_size")}
    ray = {k.removeprefix("ray_"): opts.pop(k) for k in list(opts) if k.startswith("ray_")}
    if not inputs:
        raise UsageError("no inputs: give files, folders, glob patterns, or - to read paths from stdin")
    if opts["min_pixels"] and opts["max_pixels"] and opts["min_pixels"] > opts["max_pixels"]:
        raise UsageError("--min-pixels is larger than --max-pixels")
    options = ScanOptions(inputs=list(inputs), **opts)
    model["model"] = bundle = open_bundle(model["model"])  # the page strategy is chosen from it first

    def load(**decoder: Any):  # what the page strategy asks for: parallel, context_pixels
        rec = load_recognizer(**model, min_pixels=options.min_pixels, max_pixels=options.max_pixels,
                              max_new_tokens=options.max_new_tokens, lazy=True, **decoder)
        if options.task not in rec.tasks:
            rec.close()
            raise UsageError(f"--task {options.task} is not available with this model (it has: {', '.join(rec.tasks)})")
        if options.task == "spotting" and not options.prompt and not rec.spotting_tokens.locations:
            rec.close()
            raise UsageError("--task spotting: this model's tokenizer has no <|LOC_n|> location tokens")
        try:
            rec.check_prompt(options.prompt)
        except ValueError as exc:
            rec.close()
            raise UsageError(f"--prompt: {exc}") from exc
        return rec

    if ray["address"] is None:
        summary = Scan(options, load, bundle=bundle).run()
    else:  # Ray is imported only here
        from ..batch.ray_cluster import RayOptions, parse_workers
        from ..batch.ray_scan import RayScan

        workers = parse_workers(ray["workers"]) if ray["workers"] else None
        ray_options = RayOptions(address=ray["address"], workers=workers, cpus_per_worker=ray["cpus_per_worker"],
                                 gpus_per_worker=ray["gpus_per_worker"], pages_per_task=ray["pages_per_task"],
                                 task_retries=ray["task_retries"])
        summary = RayScan(options, load, ray_options, bundle=bundle).run()
    if options.summary_json:
        write_summary_json(options.summary_json, summary)
    if not options.quiet:
        click.echo(f"ppvl-ocr: {summary.line()}", err=True)
    if summary.interrupted:
        resume = "re-run the same command to resume" if options.output != "-" or options.state else \
            "pages already written are not remembered without --state DIR"
        click.echo(f"ppvl-ocr: interrupted; {resume}", err=True)
    ctx.exit(summary.exit_code)
