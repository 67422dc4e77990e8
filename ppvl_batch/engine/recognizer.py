"""The library API shared by the CLI, the server and the benchmarks: a bundle loaded once,
pages in, text out.

    rec = Recognizer.load("bundle/")                       # vision in PyTorch, decoder in llama.cpp
    [page] = rec.recognize([Image.open("scan.png")], task="ocr")
    page.text, page.finish_reason, page.output_tokens

For pipelining, the two stages are separate: `encode` runs vision for a batch of pages, `decode`
turns one encoded page into text through the one persistent llama.cpp context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..bundle import Bundle, resolve_model
from ..documents.images import to_rgb
from .confidence import TextConfidence, text_confidence
from .detokenize import Detokenizer
from .generate import DecodeRequest, Generation, RepetitionGuard, Sampling, TokenChoice, generate, generate_many
from .llama import DecoderError, TextDecoder
from .prompt import TASKS, V1_TASKS, task_text
from .spotting import Spotting, SpottingTokens, items_from_ids, parse_items, parse_spotting
from .tokenizer import PromptTokenizer
from .vision import ImageEmbedding, ImagePreprocessor, PreparedImage, VisionEncoder, load_vision_tower

__all__ = ["TASKS", "PageResult", "EncodedPage", "Recognizer", "Sampling", "DecoderError"]

DEFAULT_MAX_NEW_TOKENS = 4096
PROMPT_TEXT_TOKENS = 64  # room for the text around the image in the context

# PaddleOCR-VL 1.5+ spotting: a larger pixel budget, small images upscaled 2x first (model card).
SPOTTING_MAX_PIXELS = 2048 * 28 * 28
SPOTTING_UPSCALE_BELOW = 1500


@dataclass
class PageResult:
    text: str
    finish_reason: str  # stop | length | repetition | abort
    image_tokens: int
    prompt_tokens: int  # text and image tokens of the prompt
    output_tokens: int
    width: int  # size of the image the model saw
    height: int
    vision_seconds: float
    prefill_seconds: float
    decode_seconds: float
    token_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. an answer the context cut short
    # Each generated token's probability under the model: the softmax of its step's raw logits
    # (before temperature and top_p), one per token id (engine/confidence.py sums them up).
    token_probs: list[float] = field(default_factory=list)
    # Per token, the step's most likely tokens as (id, log probability), when the request asked
    # for them (DecodeRequest.top_logprobs; the server's OpenAI `top_logprobs`).
    top_logprobs: list[list[tuple[int, float]]] | None = None

    @property
    def seconds(self) -> float:
        return self.vision_seconds + self.prefill_seconds + self.decode_seconds

    def text_confidence(self, exclude: Collection[int] = ()) -> TextConfidence:
        """The confidence of the text (token ids in `exclude`, e.g. spotting's location tokens,
        left out; the final </s> is never among the token ids)."""
        return text_confidence(self.token_ids, self.token_probs, exclude=exclude)


@dataclass
class EncodedPage:
    """A page after the vision stage."""

    embedding: ImageEmbedding

    @property
    def image_tokens(self) -> int:
        return self.embedding.rows * self.embedding.cols


class Recognizer:
    """A bundle loaded once, turning page images into text: the library API (README, "Library use").

    `Recognizer.load(model, ...)` opens the bundle (a path, or the demo model) and builds the vision
    tower and the llama.cpp decoder (lazily with `lazy=True`: at the first page). `recognize(images,
    task or prompt)` answers each page; `encode` and `decode` are its two halves, which scan and the
    server schedule themselves (vision for a batch, then several pages decoded together). Use it as
    a context manager, or call close(), to free llama.cpp's memory. Its settings
    (context size, parallel decoding) are fixed when it is built; callers that need others build
    another."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        quant: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        n_ctx: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        kv_type: str = "f16",
        parallel: int = 1,
        context_pixels: int | None = None,
        lazy: bool = False,
    ):
        """`parallel`: pages (or layout blocks) decoded together, each with its own KV cache;
        `context_pixels`: the largest image a prompt will carry when it is above the pages' own
        (layout blocks have pixel limits of their own), for the context's size (a given n_ctx wins).
        Both are fixed for the recognizer's life. `lazy`: load the weights only when the first
        page needs them, so a run that finds nothing to do (a nightly scan of an unchanged
        archive) costs no model load."""
        import torch

        from .llama import default_threads
        from .vision import resolve_precision

        self.bundle = bundle
        self.quant = (quant or bundle.default_quant).upper()
        self._gguf_path = bundle.text_gguf(self.quant)
        self.threads = threads or default_threads()
        self._device = device
        self._vision_dtype = dtype
        self.vision_precision = resolve_precision(dtype, device).name
        self.preprocessor = ImagePreprocessor(bundle.preprocessor)
        self.min_pixels = min_pixels or self.preprocessor.min_pixels
        self.max_pixels = max_pixels or self.preprocessor.max_pixels
        self._tokenizer_dir = bundle.tokenizer_dir  # a bundle without tokenizer files fails here, before any work
        self._prompts: PromptTokenizer | None = None
        self._detokenizer: Detokenizer | None = None
        self._spotting_tokens: SpottingTokens | None = None
        self.max_new_tokens = max_new_tokens
        # The llama.cpp context of one page: the largest image, the prompt text and the answer.
        self.n_ctx = n_ctx or self._context(max(self._max_image_pixels(), context_pixels or 0), max_new_tokens)
        self._decoder_options: dict[str, Any] = dict(
            n_ctx=self.n_ctx,
            threads=self.threads,
            n_gpu_layers=n_gpu_layers,
            kv_type=kv_type,
            n_seq=parallel,
        )
        self._vision: VisionEncoder | None = None
        self._decoder: TextDecoder | None = None
        if device == "cpu":
            torch.set_num_threads(self.threads)
        if not lazy:
            self.warm()

    def warm(self) -> None:
        """Load the vision and decoder weights now rather than at the first page."""
        if self._vision is None:
            tower = load_vision_tower(self.bundle.config, self.bundle.vision_file, device=self._device,
                                      dtype=self._vision_dtype)
            self._vision = VisionEncoder(tower, self.preprocessor, self._device)
        if self._decoder is None:
            self._decoder = TextDecoder(self._gguf_path, **self._decoder_options)

    @property
    def vision(self) -> VisionEncoder:
        if self._vision is None:
            self.warm()
        assert self._vision is not None  # warm() loaded it
        return self._vision

    @property
    def decoder(self) -> TextDecoder:
        if self._decoder is None:
            self.warm()
        assert self._decoder is not None  # warm() loaded it
        return self._decoder

    @classmethod
    def load(cls, model: str | Path | None = None, **options) -> Recognizer:
        """Open a bundle (a path, or `demo`/None for the bundled demo model) and load it."""
        return cls(Bundle.open(resolve_model(model)), **options)

    def load_options(self) -> dict[str, Any]:
        """What `Recognizer.load(self.bundle.path, **options)` needs to build an equal recognizer
        in another process (a Ray worker); the vision dtype as asked, so a machine that resolves
        `auto` differently reports a different model_id rather than computing other numbers."""
        d = self._decoder_options
        return dict(
            quant=self.quant, device=self._device, dtype=self._vision_dtype, threads=self.threads,
            n_gpu_layers=d["n_gpu_layers"], n_ctx=d["n_ctx"], kv_type=d["kv_type"], parallel=d["n_seq"],
            min_pixels=self.min_pixels, max_pixels=self.max_pixels, max_new_tokens=self.max_new_tokens,
        )

    @property
    def model_id(self) -> str:
        """Bundle id, decoder quant, vision precision (and KV cache type unless f16): what a
        result depends on."""
        kv = "" if self._decoder_options["kv_type"] == "f16" else f":kv-{self._decoder_options['kv_type']}"
        return f"{self.bundle.id}:{self.quant}:vision-{self.vision_precision}{kv}"

    @property
    def device(self) -> str:
        return self._device

    @property
    def tasks(self) -> tuple[str, ...]:
        return V1_TASKS if self.bundle.prompt_style == "v1" else tuple(TASKS)

    def _max_image_pixels(self) -> int:
        return max(self.max_pixels, SPOTTING_MAX_PIXELS if self.bundle.prompt_style != "v1" else 0)

    def _context(self, max_pixels: int, max_new_tokens: int) -> int:
        """One page's context in tokens: its image (smart_resize keeps to max_pixels), the prompt
        text and the answer."""
        return max_pixels // self.preprocessor.factor**2 + 1 + PROMPT_TEXT_TOKENS + max_new_tokens

    # -- stage 1: vision ----------------------------------------------------------------------

    def prepare(self, image: Image.Image, task: str | None = "ocr") -> PreparedImage:
        """smart_resize + patchify for one page (cheap; can run in a prefetch thread). Any PIL
        image is first made what `scan` reads from a file (`documents.images.to_rgb`: EXIF rotation,
        transparency onto white, every mode to 8-bit RGB), so a library caller passing
        `Image.open(path)` gets the same answer as `scan path`."""
        image = to_rgb(image)
        min_pixels, max_pixels = self.min_pixels, self.max_pixels
        if task == "spotting" and self.bundle.prompt_style != "v1":
            max_pixels = max(max_pixels, SPOTTING_MAX_PIXELS)
            if image.width < SPOTTING_UPSCALE_BELOW and image.height < SPOTTING_UPSCALE_BELOW:
                image = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
        return self.preprocessor(image, min_pixels=min_pixels, max_pixels=max_pixels)

    def encode(self, images: Sequence[Image.Image | PreparedImage], task: str | None = "ocr") -> list[EncodedPage]:
        """Vision for a batch of pages (any sizes), in as few forward passes as memory allows."""
        prepared = [im if isinstance(im, PreparedImage) else self.prepare(im, task) for im in images]
        return [EncodedPage(e) for e in self.vision.encode(prepared)]

    # -- stage 2: decoding --------------------------------------------------------------------

    @property
    def prompts(self) -> PromptTokenizer:
        """The checkpoint's tokenizer for prompts (loaded at first use; it keeps an LRU of prompt ids)."""
        if self._prompts is None:
            self._prompts = PromptTokenizer.load(self._tokenizer_dir)
        return self._prompts

    @property
    def detokenizer(self) -> Detokenizer:
        if self._detokenizer is None:
            self._detokenizer = Detokenizer(self.prompts.tokenizer, self.bundle.manifest.text.vocab_size)
        return self._detokenizer

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of generated ids, as `tokenizer.decode(ids, skip_special_tokens=False)`."""
        return self.detokenizer.decode(ids)

    @property
    def spotting_tokens(self) -> SpottingTokens:
        """The location and marker token ids of this checkpoint's tokenizer."""
        if self._spotting_tokens is None:
            self._spotting_tokens = SpottingTokens.from_tokenizer(self.prompts.tokenizer)
        return self._spotting_tokens

    def spotting(self, result: PageResult, width: float, height: float) -> Spotting:
        """The lines of a spotting answer, in pixels of the `width` x `height` page the model was
        given (engine/spotting.py); with the answer's token probabilities, when it has them,
        each line's confidence."""
        if not result.token_ids:
            return parse_spotting(result.text, width, height)
        probs = getattr(result, "token_probs", None) or None
        items = items_from_ids(result.token_ids, self.spotting_tokens, self.detokenize, probs)
        return parse_items(items, width, height)

    def check_prompt(self, prompt: str | None) -> None:
        """PromptError (a ValueError) for a free prompt that contains a special token's text."""
        if prompt:
            self.prompts.check(prompt)

    def prompt_ids(self, task: str | None = "ocr", prompt: str | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the prompt text before and after the image."""
        return self.prompts.prompt_ids(task_text(task, prompt))

    def request(
        self,
        page: EncodedPage,
        task: str | None = "ocr",
        prompt: str | None = None,
        *,
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], bool | None] | None = None,
        repetition_guard: bool = True,
        top_logprobs: int = 0,
        on_token: Callable[[TokenChoice], None] | None = None,
    ) -> DecodeRequest:
        """What the decoder needs for one encoded page; `top_logprobs` > 0 keeps that many most
        likely tokens of each step, `on_token` gets each generated token (OpenAI logprobs)."""
        before, after = self.prompt_ids(task, prompt)
        return DecodeRequest(
            before_image=before,
            image=page.embedding,
            after_image=after,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            sampling=sampling or Sampling(),
            stop=stop,
            on_text=on_text,
            repetition_guard=RepetitionGuard() if repetition_guard else None,
            detokenizer=self.detokenizer,
            top_logprobs=top_logprobs,
            on_token=on_token,
        )

    def decode(self, page: EncodedPage, task: str | None = "ocr", prompt: str | None = None, **options) -> PageResult:
        """Text of one encoded page (options as for `request`)."""
        return self._result(page, generate(self.decoder, self.request(page, task, prompt, **options)))

    def decode_many(
        self, pages: Iterable[tuple[EncodedPage, DecodeRequest]]
    ) -> Iterator[tuple[int, PageResult | DecoderError]]:
        """Decode pages with up to `parallel` in flight; yields (index, result) as pages finish,
        or (index, DecoderError) for a page that could not be decoded."""
        kept: dict[int, EncodedPage] = {}

        def requests() -> Iterator[DecodeRequest]:
            for i, (page, request) in enumerate(pages):
                kept[i] = page
                yield request

        for index, generation in generate_many(self.decoder, requests()):
            page = kept.pop(index)
            yield index, generation if isinstance(generation, DecoderError) else self._result(page, generation)

    @staticmethod
    def _result(page: EncodedPage, gen: Generation) -> PageResult:
        return PageResult(
            text=gen.text,
            finish_reason=gen.finish_reason,
            image_tokens=page.image_tokens,
            prompt_tokens=gen.prompt_tokens,
            output_tokens=len(gen.token_ids),
            width=page.embedding.width,
            height=page.embedding.height,
            vision_seconds=page.embedding.seconds,
            prefill_seconds=gen.prefill_seconds,
            decode_seconds=gen.decode_seconds,
            token_ids=gen.token_ids,
            warnings=gen.warnings,
            token_probs=[math.exp(lp) for lp in gen.token_logprobs],
            top_logprobs=gen.top_logprobs,
        )

    def recognize(
        self,
        images: Sequence[Image.Image],
        task: str | None = "ocr",
        prompt: str | None = None,
        *,
        max_new_tokens: int | None = None,
        repetition_guard: bool = True,
    ) -> list[PageResult]:
        """Text of each page, in order: one vision batch, then the decoder (`parallel` pages at a time)."""
        encoded = self.encode(images, task)
        jobs = [(page, self.request(page, task, prompt, max_new_tokens=max_new_tokens,
                                    repetition_guard=repetition_guard)) for page in encoded]
        results = dict(self.decode_many(jobs))
        for outcome in results.values():
            if isinstance(outcome, DecoderError):
                raise outcome
        # (no DecoderError is left: the filter only tells the type checker so)
        return [page for i in range(len(encoded)) if not isinstance(page := results[i], DecoderError)]

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
