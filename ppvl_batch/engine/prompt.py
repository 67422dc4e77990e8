"""Task prompts (docs/design.md section 2). The prompt itself is rendered and tokenized by the
checkpoint's own tokenizer (tokenizer.py, docs/prompts.md)."""

from __future__ import annotations

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


def detect_prompt_style(rendered: str) -> str:
    """`v1` or `v1.5`, from how a rendered prompt ends ("Assistant: " or "Assistant:\n")."""
    return "v1.5" if rendered.endswith("Assistant:\n") else "v1"
