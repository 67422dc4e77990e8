"""Prompt ids from the checkpoint's own tokenizer (docs/prompts.md).

The bundle keeps the checkpoint's tokenizer files; transformers loads them as it loads the
checkpoint (`AutoTokenizer`), renders the chat template with the variables it always passes (the
tokenizer's special tokens, `add_generation_prompt`) and tokenizes the prompt. llama.cpp never
tokenizes text. The prompt is rendered with one `<|IMAGE_PLACEHOLDER|>`; its token splits the ids
into the part before the image and the part after it (the N image embeddings go between).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .prompt import IMAGE_PLACEHOLDER

# The files of a checkpoint that make its tokenizer and chat template; convert copies the ones
# the checkpoint has.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
PROMPT_CACHE_SIZE = 256  # free prompts whose ids are kept (an LRU)


class PromptError(ValueError):
    """A prompt text the model cannot take (it contains a special token's text)."""


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer transformers builds from a checkpoint or bundle folder."""
    from ..hf import auto_tokenizer

    try:
        return auto_tokenizer(folder)
    except Exception as exc:  # transformers raises many types for unreadable tokenizer files
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelError(f"{folder}: transformers cannot load the tokenizer ({first})") from exc


class PromptTokenizer:
    def __init__(self, tokenizer: Any, cache_size: int = PROMPT_CACHE_SIZE):
        self.tokenizer = tokenizer
        self.placeholder_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if self.placeholder_id is None or self.placeholder_id == tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer has no {IMAGE_PLACEHOLDER} token")
        special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        self.special_tokens = sorted(special | set(tokenizer.all_special_tokens), key=lambda t: (-len(t), t))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()

    @classmethod
    def load(cls, folder: str | Path) -> PromptTokenizer:
        return cls(load_tokenizer(folder))

    def render(self, text: str) -> str:
        """The whole prompt for one image and `text`, as transformers' apply_chat_template writes it."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors of a broken template
            raise ModelError(f"the chat template cannot render a prompt ({exc})") from exc

    def check(self, text: str) -> None:
        """PromptError when `text` holds a special token's text (it would become that token)."""
        found = next((t for t in self.special_tokens if t in text), None)
        if found is not None:
            raise PromptError(f"the prompt contains the special token {found!r}; remove it")

    def encode(self, rendered: str) -> list[int]:
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image for the user text `text`."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        self.check(text)
        ids = self.encode(self.render(text))
        if ids.count(self.placeholder_id) != 1:
            raise ModelError(f"the chat template must render exactly one {IMAGE_PLACEHOLDER} for one image")
        at = ids.index(self.placeholder_id)
        parts = (ids[:at], ids[at + 1:])
        self._cache[text] = parts
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return parts
