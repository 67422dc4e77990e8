"""ALTO 4.4 (Library of Congress, schema alto-4-4.xsd): one file for a document, one `Page` per page.

`Description` says the unit (pixel: coordinates are the record's, the rendered page), the source image,
and a `Processing` step naming the software and whether line positions and word boxes are estimated.
Each layout block is a `TextBlock` tagged with its label (`Tags/LayoutTag`, referenced by `TAGREFS`),
its polygon as `Shape/Polygon`; lines are `TextLine`, rotated quads as `Shape/Polygon`; words are
`String` with `CONTENT` and `WC` (the line's confidence), `SP` between them. `Page/@PC` is the page's
confidence. Failed and blank pages are `Page` elements without a PrintSpace content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .document import atomic_text, page_records, xml_attr, xml_text
from .pagetext import InkBoxes, Record, TextBlock, page_blocks, positions_estimated
from .words import Point

NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
SCHEMA = "http://www.loc.gov/standards/alto/v4/alto-4-4.xsd"


class AltoWriter:
    """The ALTO file of one document (a DocumentWriter)."""

    suffix = ".alto.xml"

    def write(self, records: list[Record], source: Path, target: Path) -> None:
        write_alto(records, source, target)


def write_alto(records: list[Record], source: Path, target: Path) -> None:
    """Write `target`, the ALTO of the pages `records` name (one record per page), atomically."""
    atomic_text(target, alto_document(records, source))


def alto_document(records: list[Record], source: Path) -> str:
    pages = page_records(records)
    inks = InkBoxes(source)
    try:
        laid_out = [(record, page_blocks(record, inks.for_record(record)) if record.get("width") else [])
                    for record in pages]
    finally:
        inks.close()
    labels = sorted({block.label for _, blocks in laid_out for block in blocks})
    estimated = any(positions_estimated(r) for r, blocks in laid_out if blocks)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        (f'<alto xmlns="{NAMESPACE}" xmlns:xlink="http://www.w3.org/1999/xlink"'
         ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
         f' xsi:schemaLocation="{NAMESPACE} {SCHEMA}" SCHEMAVERSION="4.4">'),
        "<Description>",
        "<MeasurementUnit>pixel</MeasurementUnit>",
        f"<sourceImageInformation><fileName>{xml_text(source.name)}</fileName></sourceImageInformation>",
        '<Processing ID="PROC_1"><processingCategory>contentGeneration</processingCategory>',
        f"<processingStepDescription>{xml_text(_step(estimated))}</processingStepDescription>",
        (f"<processingSoftware><softwareName>ppvl-ocr</softwareName><softwareVersion>{__version__}"
         "</softwareVersion><applicationDescription>PaddleOCR-VL</applicationDescription></processingSoftware>"),
        "</Processing>",
        "</Description>",
    ]
    if labels:
        out += ["<Tags>", *(f'<LayoutTag ID="{_tag(label)}" LABEL={xml_attr(label)}/>' for label in labels), "</Tags>"]
    out.append("<Layout>")
    for record, blocks in laid_out:
        out += _page(record, blocks)
    out += ["</Layout>", "</alto>", ""]
    return "\n".join(out)


def _step(estimated: bool) -> str:
    words = "Word boxes (String) are estimated: each line's box shared among its words by character width."
    if estimated:
        return "Text recognized by a vision-language model. Line positions are estimated, not measured. " + words
    return "Text recognized by a vision-language model; line positions from the model or the PDF. " + words


def _tag(label: str) -> str:
    return "TAG_" + "".join(c if c.isalnum() else "_" for c in label)


def _geometry(bbox: Sequence[float]) -> str:
    x0, y0, x1, y1 = bbox
    return f'HPOS="{x0:.0f}" VPOS="{y0:.0f}" WIDTH="{max(x1 - x0, 0):.0f}" HEIGHT="{max(y1 - y0, 0):.0f}"'


def _polygon(points: Sequence[Point]) -> str:
    return '<Shape><Polygon POINTS="' + " ".join(f"{x:.0f},{y:.0f}" for x, y in points) + '"/></Shape>'


def _page(record: Record, blocks: list[TextBlock]) -> list[str]:
    n = record["page"]
    attrs = f'ID="page_{n}" PHYSICAL_IMG_NR="{n}"'
    if record.get("width") and record.get("height"):
        attrs += f' WIDTH="{record["width"]}" HEIGHT="{record["height"]}"'
    if record.get("confidence") is not None:
        attrs += f' PC="{record["confidence"]:.4f}"'
    if blocks:
        attrs += ' PROCESSING="PROC_1"'
    out = [f"<Page {attrs}>"]
    if record.get("width") and record.get("height"):
        out.append(f'<PrintSpace {_geometry((0, 0, record["width"], record["height"]))}>')
        for b, block in enumerate(blocks, 1):
            out += _block(block, f"{n}_{b}")
        out.append("</PrintSpace>")
    out.append("</Page>")
    return out


def _block(block: TextBlock, key: str) -> list[str]:
    lines = []
    for i, line in enumerate(block.lines, 1):
        words = line.words
        if not words:
            continue
        parts = [f'<TextLine ID="line_{key}_{i}" {_geometry(line.bbox)}>']
        if line.quad is not None and any(w.quad for w in words):
            parts.append(_polygon(line.quad))
        for w, word in enumerate(words, 1):
            if w > 1:
                parts.append("<SP/>")
            wc = f' WC="{word.confidence:.4f}"' if word.confidence is not None else ""
            parts.append(f'<String ID="string_{key}_{i}_{w}" CONTENT={xml_attr(word.text)} '
                         f'{_geometry(word.bbox)}{wc}/>')
        parts.append("</TextLine>")
        lines.append("".join(parts))
    if not lines:
        return []
    head = f'<TextBlock ID="block_{key}" {_geometry(block.bbox)} TAGREFS="{_tag(block.label)}">'
    shape = [_polygon(block.polygon)] if block.polygon else []
    return [head, *shape, *lines, "</TextBlock>"]
