"""`ppvl-ocr serve` (the OpenAI-compatible server) and `ppvl-ocr ask` (its client, or the model in this process)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..config import config_option
from ..errors import exit_codes_help
from .options import FAILED, INTERRUPTED, MODEL, OK, USAGE, load_recognizer, model_options, open_bundle

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


@click.command(epilog=SERVE_EPILOG)
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PPVL_HOST",
              help="Address to listen on; 0.0.0.0 opens it to the network (set --api-key). [env PPVL_HOST]")
@click.option("--port", type=click.IntRange(0, 65535), default=7778, show_default=True, envvar="PPVL_PORT",
              help="TCP port (0: any free one). [env PPVL_PORT]")
@click.option("--api-key", envvar="PPVL_API_KEY", metavar="KEY",
              help="Require `Authorization: Bearer KEY` on /v1/ requests (prefer the environment variable). "
                   "[env PPVL_API_KEY]")
@click.option("--allow-files", type=click.Path(exists=True, file_okay=False, path_type=Path), envvar="PPVL_ALLOW_FILES",
              metavar="DIR", help="Accept file:// image URLs for files inside DIR (symlinks resolved). "
                                  "[env PPVL_ALLOW_FILES]")
@click.option("--allow-remote-images", is_flag=True, envvar="PPVL_ALLOW_REMOTE_IMAGES",
              help="Fetch http(s) image URLs (off: the server makes no outgoing requests). "
                   "[env PPVL_ALLOW_REMOTE_IMAGES]")
@click.option("--queue-size", type=click.IntRange(0), default=32, show_default=True, envvar="PPVL_QUEUE_SIZE",
              help="Requests that may wait behind the one running; more get 503 with Retry-After. "
                   "[env PPVL_QUEUE_SIZE]")
@click.option("--max-images", type=click.IntRange(1), default=8, show_default=True, envvar="PPVL_MAX_IMAGES",
              help="Images per request. [env PPVL_MAX_IMAGES]")
@click.option("--max-image-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              envvar="PPVL_MAX_IMAGE_PIXELS", help="Largest image accepted (width x height, checked before "
                                                   "decoding). [env PPVL_MAX_IMAGE_PIXELS]")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=32, show_default=True,
              envvar="PPVL_MAX_BODY_MB", help="Largest request body, and largest fetched image, in MiB. "
                                             "[env PPVL_MAX_BODY_MB]")
@click.option("--max-tokens", type=click.IntRange(1), default=None, envvar="PPVL_MAX_TOKENS",
              help="Answer length when a request gives no max_tokens (default: 1024, or --max-tokens-limit if "
                   "lower). [env PPVL_MAX_TOKENS]")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=4096, show_default=True,
              envvar="PPVL_MAX_TOKENS_LIMIT", help="Largest max_tokens a request may ask for. "
                                                  "[env PPVL_MAX_TOKENS_LIMIT]")
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
    from ..errors import UsageError
    from ..serve.app import run_server
    from ..serve.requests import ServeOptions

    if api_key == "":
        raise UsageError("--api-key is empty")
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise UsageError(f"--max-tokens {max_tokens} is larger than --max-tokens-limit {max_tokens_limit}")
    options = ServeOptions(
        api_key=api_key, allow_files=allow_files, allow_remote_images=allow_remote_images,
        max_body_bytes=int(max_body_mb * 1024 * 1024), max_image_pixels=max_image_pixels, max_images=max_images,
        default_max_tokens=max_tokens or min(1024, max_tokens_limit), max_tokens_limit=max_tokens_limit,
        queue_size=queue_size, request_timeout=timeout,
    )
    logging.getLogger("ppvl_batch.serve").setLevel(logging.INFO)
    logging.getLogger("ppvl_batch.serve.requests").setLevel(logging.WARNING if quiet else logging.INFO)
    # The context must hold the largest page plus the longest answer a request may ask for.
    run_server(options, lambda: load_recognizer(**model, max_new_tokens=max_tokens_limit, parallel=parallel),
               host, port)


# ---------------------------------------------------------------------------------------------
# ask
# ---------------------------------------------------------------------------------------------


@click.command(epilog=exit_codes_help([OK, FAILED, USAGE, MODEL]))
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
@click.option("--layout", is_flag=True,
              help="Parse the page(s) block by block with the bundle's layout model and print the Markdown, as "
                   "`scan` makes a page's text in layout mode (--max-tokens per block; local only: the server "
                   "reads whole pages).")
@model_options
def ask(images: tuple[Path, ...], page: int, text: str, server: str | None, api_key: str | None, stream: bool,
        max_tokens: int, timeout: float, layout: bool, **model: Any) -> None:
    """Read one page (or several) and print the answer on stdout.

    \b
    ppvl-ocr ask --image page.png --server http://127.0.0.1:7778
    ppvl-ocr ask --image report.pdf --page 3 --text "Table Recognition:" --stream -s URL
    ppvl-ocr ask --image page.png --model paddleocr-vl      # locally, no server

    With --server (or PPVL_SERVER) the pages go to a running `ppvl-ocr serve` or any OpenAI
    Chat Completions server, and --model is not used; without one the model (--model, or the
    demo model) runs in this process. Which of the two happens is said on stderr.
    """
    from ..serve.client import ask_local, ask_server, load_page

    if layout:
        _ask_layout(images, page, text, server, stream, max_tokens, model)
        return
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



def _ask_layout(images: tuple[Path, ...], page: int, text: str, server: str | None, stream: bool, max_tokens: int,
                model: dict[str, Any]) -> None:
    """ask --layout: the pages parsed in one batch as `scan` parses them in layout mode (the same
    strategy, recognizer settings and page rendering), their Markdown on stdout through the one
    document assembler (tables merged across them), a line on stderr for each block that failed."""
    from ..batch.layout_mode import LayoutPlan
    from ..batch.options import ScanOptions
    from ..batch.strategy import choose_strategy
    from ..documents.inputs import InputFile
    from ..errors import ModelError, UsageError
    from ..serve.client import load_page

    refused = [name for name, given in (("--server", server), ("--stream", stream), ("--text", text != "OCR:"))
               if given]
    if refused:
        raise UsageError(f"--layout does not take {', '.join(refused)}: "
                         "it runs the model here and each block gets its label's prompt")
    bundle = open_bundle(model["model"])
    if bundle.layout_dir is None:
        raise ModelError(f"{bundle.path}: has no layout model; "
                         f"add one with `ppvl-ocr convert --add-layout LAYOUT {bundle.path}`")
    plan = choose_strategy(ScanOptions(inputs=[], layout=True, max_new_tokens=max_tokens), bundle)
    assert isinstance(plan, LayoutPlan)  # layout=True on a bundle with a layout model
    with load_recognizer(**{**model, "model": bundle}, max_new_tokens=max_tokens, **plan.recognizer_options()) as rec:
        strategy = plan.start(rec, Path.cwd())
        pages = [strategy.prepare(load_page(path, page, max_pixels=rec.max_pixels)) for path in images]
        parser = strategy.parser(InputFile(str(images[0]), images[0].resolve()))
        parsed = parser.parse(pages)
    for path, result in zip(images, parsed):
        for block in result.blocks:
            if block.error:
                click.echo(f"ppvl-ocr: {path}: block {block.id} ({block.label}): {block.error['message']}", err=True)
    click.echo(parser.markdown(parsed))
