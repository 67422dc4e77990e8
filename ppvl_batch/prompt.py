"""The prompt around one page image (docs/design.md section 2).

The checkpoint's own chat template renders the prompt with a single `<|IMAGE_PLACEHOLDER|>`;
we cut it there into the text before the image (ending in `<|IMAGE_START|>`) and the text after
it (starting with `<|IMAGE_END|>`). The decoder tokenizes both parts and puts the N image
embeddings between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

IMAGE_PLACEHOLDER = "<|IMAGE_PLACEHOLDER|>"

# task name -> prompt text; spotting and seal exist from PaddleOCR-VL 1.5 on.
TASKS: dict[str, str] = {
    "ocr": "OCR:",
    "table": "Table Recognition:",
    "formula": "Formula Recognition:",
    "chart": "Chart Recognition:",
    "spotting": "Spotting:",
    "seal": "Seal Recognition:",
}
V1_TASKS = ("ocr", "table", "formula", "chart")


@dataclass(frozen=True)
class PromptParts:
    before_image: str  # "...User: <|IMAGE_START|>"
    after_image: str  # "<|IMAGE_END|>OCR:\nAssistant:\n"


def task_text(task: str | None, prompt: str | None = None) -> str:
    """The text part of the user turn: a free prompt wins over a task name."""
    if prompt:
        return prompt
    task = task or "ocr"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} or give a free prompt")
    return TASKS[task]


def task_from_text(text: str) -> str | None:
    """The task a prompt text names ("OCR:" -> "ocr"), for the server's text parts."""
    stripped = text.strip()
    for name, value in TASKS.items():
        if stripped == value or stripped == value.rstrip(":"):
            return name
    return None


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The same environment settings transformers uses for chat templates.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template)


def render(template: str, text: str) -> str:
    """The whole prompt for one image and one text, as the checkpoint's template writes it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return _compile(template).render(messages=messages, add_generation_prompt=True)


def split_prompt(template: str, text: str) -> PromptParts:
    rendered = render(template, text)
    if rendered.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError("the chat template must render exactly one <|IMAGE_PLACEHOLDER|> for one image")
    before, after = rendered.split(IMAGE_PLACEHOLDER)
    return PromptParts(before, after)


def detect_prompt_style(template: str) -> str:
    """`v1` or `v1.5`, from how the template ends the prompt."""
    return "v1.5" if render(template, "OCR:").endswith("Assistant:\n") else "v1"
