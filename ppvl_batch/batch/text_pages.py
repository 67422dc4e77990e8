"""--text-layer: pages (and layout blocks) whose PDF text layer is trustworthy take their text
from the file instead of the model (docs/text-layer.md; the decision: documents/text_layer.py).

Policies: `ignore` (every page through the model), `auto` (trusted pages from the file, the
others through the model), `only` (never the model: untrusted pages get a `no_text_layer`
error record, which a later run without `only` reads).

Keys: a page the model reads keeps the key it had before this option existed; a page whose text
came from its layer is recorded under a key of its own (`text_settings`), so that a later
`ignore` run reads it through the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ppvl_batch.documents.pages import OpenDocument
from ppvl_batch.documents.text_layer import TextLayer, TextLayerError

from .options import PageOptions
from .records import settings_digest

POLICIES = ("auto", "ignore", "only")
NO_TEXT_LAYER = "no_text_layer"  # error type of an untrusted page under `only`
# Part of a text-layer key: bump it when the extraction changes what a page's text is.
TEXT_LAYER_VERSION = 1

log = logging.getLogger(__name__)


def policy(page: PageOptions) -> str:
    """The policy that applies: the text layer answers only plain-text reading (`--task ocr`
    without --prompt); for tables, formulas, spotting or a free prompt every page is the model's."""
    return page.text_layer if page.task == "ocr" and page.prompt is None else "ignore"


def text_settings(settings: str) -> str:
    """The settings digest of pages taken from their text layer, from the model's digest (so it
    changes with whatever changes the model's keys, e.g. --dpi, which moves the boxes)."""
    return settings_digest({"settings": settings, "text_layer": TEXT_LAYER_VERSION})


def read_layer(document: OpenDocument, number: int, source: str) -> tuple[TextLayer | None, str | None]:
    """The page's text layer (None for images, or when it cannot be read) and a warning for the
    record when extraction raised; logs (-v) why a page is not trusted."""
    try:
        layer = document.text_layer(number)
    except TextLayerError as e:
        log.warning("%s page %d: %s; read by the model", source, number, e)
        return None, f"{e}; read by the model"
    if layer is not None and not layer.trust.trusted:
        log.info("%s page %d: text layer not trusted: %s", source, number, layer.trust.reason)
    return layer, None


@dataclass(frozen=True)
class TextPage:
    """A whole page's outcome taken from its text layer, in place of a model's result."""

    layer: TextLayer
    seconds: float = 0.0
    finish_reason: None = None
    image_tokens: int = 0
    output_tokens: int = 0
    blocks: tuple[()] = ()

    @property
    def width(self) -> int:
        return self.layer.width

    @property
    def height(self) -> int:
        return self.layer.height

    @property
    def text(self) -> str:
        return self.layer.text

    def fields(self) -> dict[str, Any]:
        """The shared schema's fields, nulls included (build_record leaves None out)."""
        fields = self.layer.record_fields()
        fields.pop("text", None)
        fields.pop("page_size_pt", None)  # the record's own, from the document
        return fields
