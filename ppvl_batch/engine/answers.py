"""Answering: several page images -> one text, for one question or several decoded together.

Shared by the server (`ppvl-ocr serve`, several requests batched with `--parallel`) and by
`ppvl-ocr ask` run locally, so that a page gets the same answer either way. It needs neither
FastAPI nor an HTTP client.

Questions answered together stay independent: whatever goes wrong while preparing, encoding or
decoding one of them (an image the preprocessor refuses, a prompt the tokenizer refuses, a page too
long for the context) becomes that question's error and the others are answered as if alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from .prompt import TASKS, task_from_text
from .vision import PreparedImage

if TYPE_CHECKING:
    from .generate import TokenChoice
    from .recognizer import EncodedPage, PageResult, Recognizer, Sampling

PAGE_SEPARATOR = "\n\n"  # between the texts of several images in one answer


@dataclass
class Answer:
    text: str
    finish_reason: str  # OpenAI: stop | length; abort when on_text asked to stop
    pages: list[PageResult]

    @property
    def prompt_tokens(self) -> int:
        return sum(p.prompt_tokens for p in self.pages)

    @property
    def completion_tokens(self) -> int:
        return sum(p.output_tokens for p in self.pages)


def task_and_prompt(text: str, tasks: Sequence[str]) -> tuple[str, str | None]:
    """(task, free prompt) for the text of a user message: a task's own text ("OCR:",
    "Table Recognition:") picks the task, empty text means OCR, anything else is a free prompt.
    ValueError for a task this model does not have."""
    text = text.strip()
    task = task_from_text(text) if text else "ocr"
    if task is None:
        return "ocr", text
    if task not in tasks:
        raise ValueError(f"task {TASKS[task]!r} is not available with this model (it has: "
                         f"{', '.join(TASKS[t] for t in tasks)})")
    return task, None


@dataclass
class Question:
    """Images and how to answer them: one answer for all the images."""

    images: Sequence[Image.Image | PreparedImage]
    task: str
    prompt: str | None
    max_tokens: int  # for the whole answer
    sampling: Sampling | None = None
    stop: Sequence[str] = ()
    on_text: Callable[[str], bool | None] | None = None  # each new piece of text; False aborts
    top_logprobs: int = 0  # keep this many most likely tokens of each step (PageResult.top_logprobs)
    on_token: Callable[[TokenChoice], None] | None = None  # each generated token, before its text


class _Progress:
    """One answer being built page by page: budget, texts, and why it ended."""

    def __init__(self, question: Question) -> None:
        self.question = question
        self.pages: list[EncodedPage] = []
        self.results: list[PageResult] = []
        self.texts: list[str] = []
        self.budget = question.max_tokens
        self.finish = "stop"
        self.error: Exception | None = None
        self.done = False

    def fail(self, error: Exception) -> None:
        self.error, self.done = error, True

    def next_page(self) -> EncodedPage | None:
        """The next page to decode, or None when the answer is complete."""
        i = len(self.results)
        if self.done or i == len(self.pages):
            self.done = True
            return None
        if i:
            if self.budget <= 0:
                self.finish, self.done = "length", True
                return None
            self.texts.append(PAGE_SEPARATOR)
            on_text = self.question.on_text
            if on_text is not None and on_text(PAGE_SEPARATOR) is False:
                self.finish, self.done = "abort", True
                return None
        return self.pages[i]

    def add(self, result: PageResult | Exception, rec: Recognizer) -> None:
        if isinstance(result, Exception):
            self.fail(result)
            return
        self.results.append(result)
        self.texts.append(result.text)
        self.budget -= result.output_tokens
        if result.finish_reason != "stop":
            self.finish = "abort" if result.finish_reason == "abort" else "length"
            self.done = True
        # The engine reports end-of-text and a stop string alike; a stop string ends the answer.
        elif self.question.stop and any(s in rec.detokenize(result.token_ids) for s in self.question.stop):
            self.done = True

    def answer(self) -> Answer | Exception:
        return self.error or Answer("".join(self.texts), self.finish, self.results)


def _encode(rec: Recognizer, progress: list[_Progress]) -> None:
    """Vision for every question's images in one pass. If that pass fails, each question is
    encoded alone, so that only the question whose images cannot be encoded fails."""
    prepared: list[list[PreparedImage]] = []
    for p in progress:
        try:
            prepared.append([im if isinstance(im, PreparedImage) else rec.prepare(im, p.question.task)
                             for im in p.question.images])
        except Exception as exc:  # an image this question's task cannot take
            p.fail(exc)
            prepared.append([])
    going = [(p, images) for p, images in zip(progress, prepared) if not p.done]
    if not going:
        return
    try:
        encoded = iter(rec.encode([im for _, images in going for im in images]))
        for p, images in going:
            p.pages = [next(encoded) for _ in images]
    except Exception as exc:
        if len(going) == 1:
            going[0][0].fail(exc)
            return
        for p, images in going:
            try:
                p.pages = rec.encode(images)
            except Exception as exc:
                p.fail(exc)


def answer_many(rec: Recognizer, questions: Sequence[Question]) -> list[Answer | Exception]:
    """Answer several questions together: one vision pass for all their images, then rounds in
    which the next page of every answer still going is decoded together (up to the recognizer's
    `parallel` at a time). Each answer is what it would be alone: the images one after the other,
    `max_tokens` bounding the whole answer, a stop string ending it. What fails for one question
    (a page the decoder cannot take, a prompt that cannot be tokenized) is that question's
    exception in the list; the others are not affected. Only a failure of a decoding step shared
    by all of them (llama.cpp itself) is raised."""
    progress = [_Progress(q) for q in questions]
    _encode(rec, progress)
    while True:
        round_ = []
        for p in progress:
            if (page := p.next_page()) is None:
                continue
            q = p.question
            try:
                request = rec.request(page, q.task, q.prompt, max_new_tokens=p.budget, sampling=q.sampling,
                                      stop=q.stop, on_text=q.on_text, top_logprobs=q.top_logprobs, on_token=q.on_token)
            except Exception as exc:
                p.fail(exc)
                continue
            round_.append((p, page, request))
        if not round_:
            return [p.answer() for p in progress]
        for index, result in rec.decode_many([(page, request) for _, page, request in round_]):
            p = round_[index][0]
            try:
                p.add(result, rec)
            except Exception as exc:
                p.fail(exc)


def answer_images(rec: Recognizer, question: Question) -> Answer:
    """One question's answer (`ppvl-ocr ask` run locally); raises what made it fail."""
    [answer] = answer_many(rec, [question])
    if isinstance(answer, Exception):
        raise answer
    return answer
