"""ppvl-ocr: the command line. Each command is a thin layer over the library modules."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import config_option
from .errors import ExitCode, PPVLError, exit_codes_help
from .engine.prompt import TASKS

OK, FAILED, USAGE, MODEL, OUTPUT, INTERRUPTED = ExitCode  # the codes each command lists in --help


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
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()


def model_options(func: Callable) -> Callable:
    """The options that load a model, shared by every command that runs one."""
    options = [
        click.option("--model", "-m", envvar="PPVL_MODEL", metavar="BUNDLE",
                     help="Model bundle folder (from `ppvl-ocr convert`); `demo` or unset: the bundled demo model. [env PPVL_MODEL]"),
        click.option("--quant", envvar="PPVL_QUANT", metavar="NAME",
                     help="Decoder quantization to use when the bundle has several (default: the bundle's first). [env PPVL_QUANT]"),
        click.option("--device", envvar="PPVL_DEVICE", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where the vision encoder runs. [env PPVL_DEVICE]"),
        click.option("--vision-dtype", envvar="PPVL_VISION_DTYPE", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default="auto",
                     show_default=True, help="Vision precision; auto = bf16 where the CPU/GPU computes it natively (AVX512-BF16, AMX, CUDA), "
                     "else fp32; int8 = auto with int8 weights (half the vision memory, see README). [env PPVL_VISION_DTYPE]"),
        click.option("--threads", envvar="PPVL_THREADS", type=click.IntRange(1), default=None,
                     help="CPU threads for vision and decoder (default: physical cores). [env PPVL_THREADS]"),
        click.option("--n-gpu-layers", envvar="PPVL_N_GPU_LAYERS", type=click.IntRange(0), default=0, show_default=True,
                     help="Decoder layers offloaded to the GPU (llama-cpp-python built with CUDA/Metal). [env PPVL_N_GPU_LAYERS]"),
        click.option("--kv-type", envvar="PPVL_KV_TYPE", type=click.Choice(["f16", "f32", "q8_0"]), default="f16",
                     show_default=True, help="llama.cpp KV cache precision: f32 (with flash attention off) gives "
                     "transformers' numerics, q8_0 halves the cache again. [env PPVL_KV_TYPE]"),
        click.option("--ctx-size", envvar="PPVL_CTX_SIZE", type=click.IntRange(256), default=None,
                     help="llama.cpp context in tokens (default: the largest page + max new tokens). [env PPVL_CTX_SIZE]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_recognizer(
    model: str | None, quant: str | None, device: str, vision_dtype: str, threads: int | None,
    n_gpu_layers: int, kv_type: str, ctx_size: int | None, **extra: Any,
):
    """A Recognizer from the shared model options; says so on stderr when the demo model is used."""
    from .bundle import GET_A_MODEL
    from .engine.recognizer import Recognizer

    if model in (None, "", "demo"):
        click.echo(f"ppvl-ocr: using the small bundled demo model; for real documents {GET_A_MODEL}", err=True)
    return Recognizer.load(
        model or None, quant=quant, device=device, dtype=vision_dtype, threads=threads,
        n_gpu_layers=n_gpu_layers, kv_type=kv_type, n_ctx=ctx_size, **extra,
    )


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


@main.command(epilog=exit_codes_help([OK, USAGE, MODEL, OUTPUT, INTERRUPTED]))
@click.argument("source", metavar="CHECKPOINT")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=True, dir_okay=True),
              help="Bundle folder to create.")
@click.option("--quant", "quants", multiple=True, metavar="NAME",
              help="Decoder quantization: F32, F16, Q8_0, Q5_K_M, Q4_K_M (default), Q4_0. Repeat for several in one bundle.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at OUTPUT (only once the new one is complete).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for quantization.")
@click.option("--mmproj", is_flag=True,
              help="Also write the vision tower as llama.cpp's mmproj GGUF (mmproj-F16.gguf), so llama.cpp can run the whole model for comparison.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def convert(source: str, output: str, quants: tuple[str, ...], overwrite: bool, threads: int | None, mmproj: bool,
            quiet: bool) -> None:
    """Convert a PaddleOCR-VL checkpoint into a model bundle.

    CHECKPOINT is a local folder of the Hugging Face checkpoint (PaddleOCR-VL v1, 1.5 or 1.6,
    as PaddlePaddle published it or as transformers saved it), or a hub id such as
    PaddlePaddle/PaddleOCR-VL that is in the local Hugging Face cache (or downloadable).

    The text decoder becomes a GGUF for llama.cpp (arch `paddleocr`), quantized in process; the
    vision encoder and projector stay at the checkpoint's precision. Nothing is written to OUTPUT
    until the bundle is complete.

    \b
    ppvl-ocr convert ./PaddleOCR-VL -o paddleocr-vl
    ppvl-ocr convert ./PaddleOCR-VL-1.5 -o vl15 --quant Q4_K_M --quant Q8_0
    """
    from .convert import convert as run_convert
    from .convert import parse_quants

    names = parse_quants(quants)
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"ppvl-ocr: {m}", err=True))
    run_convert(source, output, names, overwrite=overwrite, threads=threads, mmproj=mmproj, log=say,
                progress=not quiet and sys.stderr.isatty())


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


@main.command(epilog=exit_codes_help([OK, USAGE, MODEL]))
@click.argument("bundle", metavar="BUNDLE", default="demo")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also check every file's sha256 against the manifest.")
def inspect(bundle: str, as_json: bool, verify: bool) -> None:
    """Show a bundle's architecture, parameters per component, files and precision.

    BUNDLE defaults to the bundled demo model.
    """
    import orjson

    from .bundle import Bundle, resolve_model
    from .errors import ModelError
    from .inspection import describe, render_text

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


# ---------------------------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------------------------


def _parse_pages(ctx: click.Context, param: click.Parameter, value: str | None):
    from .pages import PageRanges

    try:
        return PageRanges.parse(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


SCAN_EPILOG = """\b
Resume: re-running the same command skips every page already in the output.
A page's checkpoint key is the file's sha256, the page number and all that
changes the answer (model and quant, --task/--prompt, --min/--max-pixels,
--dpi, --max-new-tokens): a changed file is read again, a moved one is not.
The output file is itself the checkpoint (a partial last line left by a
crash is cut off and its page redone); with -o - give --state DIR to resume.
A lock (OUTPUT.lock or DIR/lock) stops two runs writing one output; a lock
left by a dead process is taken over. Outputs may not lie inside an input
folder, and an existing file that is not a ppvl-ocr output is never
overwritten without --overwrite.

\b
Records (one JSON object per line, written and flushed page by page):
  source sha256 page page_count width height task prompt text finish_reason
  status (ok|error) error {type, message} image_tokens output_tokens
  seconds model key, and when they apply: blank (true: no ink, not read),
  warnings (e.g. "repaired: ..." for a damaged PDF), same_as (the file with
  the same content whose record this one copies).
A document that cannot be opened gets one record with page null. Error types:
  missing unreadable empty unsupported corrupt truncated encrypted too_large
  recognition internal worker_crashed (--ray)
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


@main.command(epilog=SCAN_EPILOG)
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@config_option
@click.option("-o", "--output", default="-", show_default=True, envvar="PPVL_OUTPUT", metavar="FILE",
              help="JSONL records, one per page; `-` is stdout, which then carries nothing else. [env PPVL_OUTPUT]")
@click.option("--markdown", type=click.Path(file_okay=False, path_type=Path), envvar="PPVL_MARKDOWN", metavar="DIR",
              help="Also write one DIR/<path>.md per document (e.g. docs/a.pdf -> DIR/docs/a.pdf.md; paths "
                   "outside the working directory go under DIR/_abs/), atomically, once the document is complete. "
                   "[env PPVL_MARKDOWN]")
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
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True, envvar="PPVL_PARALLEL",
              help="Pages decoded together in the one llama.cpp context (one batched step for all; each "
                   "needs its own KV cache). [env PPVL_PARALLEL]")
@click.option("--retry-failed", is_flag=True, envvar="PPVL_RETRY_FAILED",
              help="Read again the pages that failed in earlier runs (otherwise skipped and counted). A file "
                   "that could not be opened is tried on every run anyway, but records a new error only with "
                   "this flag. [env PPVL_RETRY_FAILED]")
@click.option("--overwrite", is_flag=True, envvar="PPVL_OVERWRITE",
              help="Start over: empty the output and its checkpoint, replace Markdown files. [env PPVL_OVERWRITE]")
@click.option("--skip-blank/--no-skip-blank", default=True, show_default=True, envvar="PPVL_SKIP_BLANK",
              help="Record pages with no ink (judged from the pixels) as blank without running the model; "
                   "--no-skip-blank reads them, also those recorded blank before. [env PPVL_SKIP_BLANK]")
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
                   "and the inputs must be at the same path on every node. [env PPVL_RAY]")
@click.option("--ray-workers", envvar="PPVL_RAY_WORKERS", metavar="N|MIN:MAX",
              help="Workers, fixed or autoscaling (default: as many as the cluster's CPUs fit). [env PPVL_RAY_WORKERS]")
@click.option("--ray-cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
              envvar="PPVL_RAY_CPUS_PER_WORKER", help="CPUs per worker, also its torch and llama.cpp threads. "
                                                     "[env PPVL_RAY_CPUS_PER_WORKER]")
@click.option("--ray-gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              envvar="PPVL_RAY_GPUS_PER_WORKER", help="GPUs per worker (with --device cuda). [env PPVL_RAY_GPUS_PER_WORKER]")
@click.option("--ray-pages-per-task", type=click.IntRange(1), default=2, show_default=True,
              envvar="PPVL_RAY_PAGES_PER_TASK", help="Pages a worker reads per task (one vision batch): records arrive "
                                                    "a task at a time, and a dead worker's task is redone. "
                                                    "[env PPVL_RAY_PAGES_PER_TASK]")
@click.option("--ray-task-retries", type=click.IntRange(0), default=3, show_default=True,
              envvar="PPVL_RAY_TASK_RETRIES", help="Tries after the first for a page whose worker dies; then the page "
                                                  "gets a worker_crashed error record. [env PPVL_RAY_TASK_RETRIES]")
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
    flight and exits with 130 (press again to stop at once); re-running resumes.
    """
    import warnings

    from .errors import UsageError
    from .batch.local import Scan
    from .batch.options import ScanOptions, write_summary_json

    # PIL warns about each damaged file it still decodes; the records say what failed
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

    model = {k: opts.pop(k) for k in ("model", "quant", "device", "vision_dtype", "threads", "n_gpu_layers", "kv_type", "ctx_size")}
    ray = {k.removeprefix("ray_"): opts.pop(k) for k in list(opts) if k.startswith("ray_")}
    if not inputs:
        raise UsageError("no inputs: give files, folders, glob patterns, or - to read paths from stdin")
    if opts["min_pixels"] and opts["max_pixels"] and opts["min_pixels"] > opts["max_pixels"]:
        raise UsageError("--min-pixels is larger than --max-pixels")
    options = ScanOptions(inputs=list(inputs), **opts)

    def load():
        rec = load_recognizer(**model, min_pixels=options.min_pixels, max_pixels=options.max_pixels,
                              max_new_tokens=options.max_new_tokens, parallel=options.parallel, lazy=True)
        if options.task not in rec.tasks:
            rec.close()
            raise UsageError(f"--task {options.task} is not available with this model (it has: {', '.join(rec.tasks)})")
        try:
            rec.check_prompt(options.prompt)
        except ValueError as exc:
            rec.close()
            raise UsageError(f"--prompt: {exc}") from exc
        return rec

    if ray["address"] is None:
        summary = Scan(options, load).run()
    else:  # Ray is imported only here
        from .batch.ray_executor import RayOptions, parse_workers
        from .batch.ray_scan import RayScan

        workers = parse_workers(ray["workers"]) if ray["workers"] else None
        ray_options = RayOptions(address=ray["address"], workers=workers, cpus_per_worker=ray["cpus_per_worker"],
                                 gpus_per_worker=ray["gpus_per_worker"], pages_per_task=ray["pages_per_task"],
                                 task_retries=ray["task_retries"])
        summary = RayScan(options, load, ray_options).run()
    if options.summary_json:
        write_summary_json(options.summary_json, summary)
    if not options.quiet:
        click.echo(f"ppvl-ocr: {summary.line()}", err=True)
    if summary.interrupted:
        resume = "re-run the same command to resume" if options.output != "-" or options.state else \
            "pages already written are not remembered without --state DIR"
        click.echo(f"ppvl-ocr: interrupted; {resume}", err=True)
    ctx.exit(summary.exit_code)


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------

SERVE_EPILOG = """\b
Endpoints:
  POST /v1/chat/completions   OpenAI Chat Completions: one user message with
                              image_url parts (data: URLs; file:// with
                              --allow-files; http(s) with --allow-remote-images)
                              and a task text ("OCR:", "Table Recognition:", ...)
  GET  /v1/models             the loaded model
  GET  /health                200 once the model is loaded, 503 before
  GET  /metrics               Prometheus text format

\b
Stopping: SIGTERM or Ctrl-C stops accepting requests, lets the ones in
flight finish, then ends (SIGTERM: by the signal, status 143; Ctrl-C: 130).

""" + exit_codes_help([FAILED, USAGE, MODEL, INTERRUPTED])


@main.command(epilog=SERVE_EPILOG)
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PPVL_HOST",
              help="Address to listen on; 0.0.0.0 opens it to the network (set --api-key). [env PPVL_HOST]")
@click.option("--port", type=click.IntRange(0, 65535), default=7778, show_default=True, envvar="PPVL_PORT",
              help="TCP port (0: any free one). [env PPVL_PORT]")
@click.option("--api-key", envvar="PPVL_API_KEY", metavar="KEY",
              help="Require `Authorization: Bearer KEY` on /v1/ requests (prefer the environment variable). "
                   "[env PPVL_API_KEY]")
@click.option("--allow-files", type=click.Path(exists=True, file_okay=False, path_type=Path), envvar="PPVL_ALLOW_FILES",
              metavar="DIR", help="Accept file:// image URLs for files inside DIR (symlinks resolved). [env PPVL_ALLOW_FILES]")
@click.option("--allow-remote-images", is_flag=True, envvar="PPVL_ALLOW_REMOTE_IMAGES",
              help="Fetch http(s) image URLs (off: the server makes no outgoing requests). [env PPVL_ALLOW_REMOTE_IMAGES]")
@click.option("--queue-size", type=click.IntRange(0), default=32, show_default=True, envvar="PPVL_QUEUE_SIZE",
              help="Requests that may wait behind the one running; more get 503 with Retry-After. [env PPVL_QUEUE_SIZE]")
@click.option("--max-images", type=click.IntRange(1), default=8, show_default=True, envvar="PPVL_MAX_IMAGES",
              help="Images per request. [env PPVL_MAX_IMAGES]")
@click.option("--max-image-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              envvar="PPVL_MAX_IMAGE_PIXELS", help="Largest image accepted (width x height, checked before "
                                                   "decoding). [env PPVL_MAX_IMAGE_PIXELS]")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=32, show_default=True,
              envvar="PPVL_MAX_BODY_MB", help="Largest request body, and largest fetched image, in MiB. [env PPVL_MAX_BODY_MB]")
@click.option("--max-tokens", type=click.IntRange(1), default=None, envvar="PPVL_MAX_TOKENS",
              help="Answer length when a request gives no max_tokens (default: 1024, or --max-tokens-limit if "
                   "lower). [env PPVL_MAX_TOKENS]")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=4096, show_default=True,
              envvar="PPVL_MAX_TOKENS_LIMIT", help="Largest max_tokens a request may ask for. [env PPVL_MAX_TOKENS_LIMIT]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              envvar="PPVL_TIMEOUT", metavar="SECONDS",
              help="Per request, from arrival to the last token (waiting included); then 408. [env PPVL_TIMEOUT]")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True, envvar="PPVL_PARALLEL",
              help="Requests decoded together: those waiting when the model becomes free share each decoding "
                   "step (more requests/min; each needs its own KV cache). [env PPVL_PARALLEL]")
@click.option("-q", "--quiet", is_flag=True, envvar="PPVL_QUIET", help="No log line per request. [env PPVL_QUIET]")
@model_options
def serve(host: str, port: int, api_key: str | None, allow_files: Path | None, allow_remote_images: bool,
          queue_size: int, max_images: int, max_image_pixels: int, max_body_mb: float, max_tokens: int | None,
          max_tokens_limit: int, timeout: float, parallel: int, quiet: bool, **model: Any) -> None:
    """OpenAI-compatible OCR server: existing OpenAI clients work against it unchanged.

    \b
    ppvl-ocr serve --model paddleocr-vl
    PPVL_API_KEY=secret ppvl-ocr serve --model paddleocr-vl --host 0.0.0.0

    The model loads once; requests wait in a fair first-come queue and are answered one at a
    time, or with --parallel N up to N at a time. Several images in one message are read one
    after the other into one answer. One log line per request goes to stderr.
    """
    from .errors import UsageError
    from .serve.app import run_server
    from .serve.requests import ServeOptions

    if api_key == "":
        raise UsageError("--api-key is empty")
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise UsageError(f"--max-tokens {max_tokens} is larger than --max-tokens-limit {max_tokens_limit}")
    options = ServeOptions(
        api_key=api_key, allow_files=allow_files, allow_remote_images=allow_remote_images,
        max_body_bytes=int(max_body_mb * 1024 * 1024), max_image_pixels=max_image_pixels, max_images=max_images,
        default_max_tokens=max_tokens or min(1024, max_tokens_limit), max_tokens_limit=max_tokens_limit, queue_size=queue_size, request_timeout=timeout,
    )
    logging.getLogger("ppvl_batch.serve").setLevel(logging.INFO)
    logging.getLogger("ppvl_batch.serve.requests").setLevel(logging.WARNING if quiet else logging.INFO)
    # The context must hold the largest page plus the longest answer a request may ask for.
    run_server(options, lambda: load_recognizer(**model, max_new_tokens=max_tokens_limit, parallel=parallel), host, port)


# ---------------------------------------------------------------------------------------------
# ask
# ---------------------------------------------------------------------------------------------


@main.command(epilog=exit_codes_help([OK, FAILED, USAGE, MODEL]))
@config_option
@click.option("-i", "--image", "images", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="PATH", help="Image or PDF to read; repeat for several pages in one answer.")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True,
              help="Page of a PDF or multi-page TIFF (1-based).")
@click.option("-t", "--text", default="OCR:", show_default=True, envvar="PPVL_TEXT",
              help="Task: 'OCR:', 'Table Recognition:', 'Formula Recognition:', 'Chart Recognition:', "
                   "'Spotting:', 'Seal Recognition:' (1.5+), or a free prompt. [env PPVL_TEXT]")
@click.option("-s", "--server", envvar="PPVL_SERVER", metavar="URL",
              help="Server to ask, e.g. http://127.0.0.1:7778 (`ppvl-ocr serve`'s address); without one the model "
                   "runs in this process. [env PPVL_SERVER]")
@click.option("--api-key", envvar="PPVL_API_KEY", metavar="KEY", help="The server's API key. [env PPVL_API_KEY]")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
@click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True, envvar="PPVL_MAX_TOKENS",
              help="Longest answer; a longer one is cut (a note on stderr). [env PPVL_MAX_TOKENS]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              metavar="SECONDS", help="How long to wait for the server.")
@model_options
def ask(images: tuple[Path, ...], page: int, text: str, server: str | None, api_key: str | None, stream: bool,
        max_tokens: int, timeout: float, **model: Any) -> None:
    """Read one page (or several) and print the answer on stdout.

    \b
    ppvl-ocr ask --image page.png --server http://127.0.0.1:7778
    ppvl-ocr ask --image report.pdf --page 3 --text "Table Recognition:" --stream -s URL
    ppvl-ocr ask --image page.png --model paddleocr-vl      # locally, no server

    With --server (or PPVL_SERVER) the pages go to a running `ppvl-ocr serve` or any OpenAI
    Chat Completions server, and --model is not used; without one the model (--model, or the
    demo model) runs in this process. Which of the two happens is said on stderr.
    """
    from .serve.client import ask_local, ask_server, load_page

    if server:
        unused = f" (the model {model['model']} is not used: a server was given)" if model["model"] else ""
        click.echo(f"ppvl-ocr: asking the server at {server}{unused}", err=True)
    else:
        click.echo(f"ppvl-ocr: running {model['model'] or 'the demo model'} in this process (no --server or "
                   "PPVL_SERVER given)", err=True)
    pages = [load_page(path, page) for path in images]

    def show(delta: str) -> None:
        click.echo(delta, nl=False)
        sys.stdout.flush()

    on_text = show if stream else None
    if server:
        reply = ask_server(server, pages, text, api_key=api_key, max_tokens=max_tokens,
                           stream=stream, timeout=timeout, on_text=on_text)
    else:
        with load_recognizer(**model, max_new_tokens=max_tokens) as rec:
            reply = ask_local(rec, pages, text, max_tokens=max_tokens, on_text=on_text)
    click.echo("" if stream else reply.text)
    if reply.finish_reason == "length":
        click.echo(f"ppvl-ocr: the answer was cut short (--max-tokens {max_tokens}, or a repetition loop)", err=True)
