"""Blocks -> Markdown, in reading order (docs/layout-text.md, "Markdown"), and a document's
Markdown from its pages (`document_markdown`: the one assembler of scan, ask --layout and
DocumentParser.markdown).

A page's Markdown is its blocks' Markdown in list order (the layout model's reading order),
joined by blank lines. Labels PaddleX leaves out (headers, footers, page numbers, footnotes,
side text) are left out by default; the JSON keeps them. Tables that run over a page break are
joined onto the first page's table when PaddleX's conditions hold (merge_tables_across_pages).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .labels import MARKDOWN_IGNORE_LABELS, Block
from .otsl import Table, cell_key, parse_table_html, table_html, total_columns

# -- titles -------------------------------------------------------------------------------------

# Numbering styles and the level each stands for (PaddleX title_level.py's semantic signal).
_BRACKETED = re.compile(r"^\s*[(（]?\d+(?:\.\d+)*[)）]")  # (1)  1)  (2.3)
_ROMAN = re.compile(r"^\s*[IVX]+(?:[.．)]|\s|$)", re.IGNORECASE)  # I.  IV)  ii
_CHINESE = re.compile(r"^\s*第?[一二三四五六七八九十]+")  # 一、  第三
_LETTER = re.compile(r"^\s*[A-Za-z][.．)]")  # A.  b)
_NUMBERED = re.compile(r"^\s*(\d+(?:\.\d+)*)")  # 1  1.2  1.2.3
MAX_TITLE_LEVEL = 5  # "######": the deepest Markdown heading


def title_level(title: str) -> int:
    """A paragraph title's level from its numbering: `1 Intro` -> 1, `1.2 Scope` -> 2,
    `1.2.3` -> 3, `I.`/`一` -> 1, `A.` -> 2, `(1)` -> 4; unnumbered -> 1. (PaddleX also votes
    with a clustering of title heights across the document; not done here.)"""
    if _BRACKETED.match(title):
        level = 4
    elif _ROMAN.match(title) or _CHINESE.match(title):
        level = 1
    elif _LETTER.match(title):
        level = 2
    elif m := _NUMBERED.match(title):
        level = m.group(1).count(".") + 1
    else:
        level = 1
    return min(level, MAX_TITLE_LEVEL)


def _one_line(text: str) -> str:
    """A heading's text: hyphenated line breaks joined, other breaks become spaces."""
    return text.strip().replace("-\n", "").replace("\n", " ")


def _paragraphs(text: str) -> str:
    """Every line of a text block its own paragraph (as PaddleX writes text blocks)."""
    return text.strip().replace("\n\n", "\n").replace("\n", "\n\n")


def _keyword_heading(text: str, keywords: frozenset[str]) -> str:
    """`Abstract ...` -> `## Abstract` then the rest, when the block opens with the keyword."""
    parts = text.strip().split(maxsplit=1)
    if parts and parts[0].lower() in keywords:
        return f"## {parts[0]}" + (f"\n\n{parts[1]}" if len(parts) > 1 else "")
    return text.strip()


_KEYWORDS = {"abstract": frozenset({"abstract", "摘要"}), "reference": frozenset({"references", "参考文献"})}
_PARAGRAPH_LABELS = frozenset({"text", "reference_content", "vision_footnote", "vertical_text"})


# -- blocks -------------------------------------------------------------------------------------


def _display_math(latex: str, tag: str | None = None) -> str:
    return f"$$\n{latex}" + (f" \\tag*{{{tag}}}" if tag else "") + "\n$$"


def block_markdown(block: Block, formula_tag: str | None = None) -> str:
    """One block's Markdown ("" for nothing to show). `formula_tag`: the formula number to
    attach to a formula with \\tag*."""
    if block.error is not None:
        message = f"{block.error['type']}: {block.error['message']}".replace("--", "- -")
        return f"<!-- block {block.id} ({block.label}): {message} -->"
    label, text = block.label, block.text
    if block.format == "image" or label == "seal":  # a seal shows as its picture, read or not
        return f"![]({block.image})" if block.image else ""
    if not text.strip():
        return ""
    if block.format == "latex":
        return _display_math(text.strip(), formula_tag)
    if block.format == "html":
        return text.strip()
    if label == "doc_title":
        return f"# {_one_line(text)}"
    if label == "paragraph_title":
        return f"{'#' * (title_level(text) + 1)} {_one_line(text)}"
    if label in _KEYWORDS:
        return _keyword_heading(text, _KEYWORDS[label])
    if label in _PARAGRAPH_LABELS:
        return _paragraphs(text)
    if label == "content":  # a table of contents: one line per entry
        return text.strip().replace("-\n", "  \n").replace("\n", "  \n")
    return text.strip()


def page_markdown(
    blocks: Sequence[Block], *, ignore: Iterable[str] = MARKDOWN_IGNORE_LABELS, formula_numbers: bool = False
) -> str:
    """A page's Markdown from its blocks in reading order. Formula numbers are left out, or with
    `formula_numbers` put on the display formula just before them as \\tag*{n}."""
    ignore = frozenset(ignore)
    parts = []
    for i, block in enumerate(blocks):
        if block.label in ignore or block.label == "formula_number":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        tag = None
        if (formula_numbers and block.label == "display_formula" and following is not None
                and following.label == "formula_number"):
            tag = following.text.strip() or None
        part = block_markdown(block, tag)
        if part:
            parts.append(part)
    return "\n\n".join(parts)


# -- tables across pages ------------------------------------------------------------------------

# What may stand after the table on the first page, and before it on the next.
_AFTER_TABLE = frozenset({"footer", "vision_footnote", "number", "footnote", "footer_image"})
_BEFORE_TABLE = frozenset({"header", "header_image", "number"})
_CONTINUED = ("continue", "cont'd", "cont‘d", "续", "續")  # "continued" contains "continue"
_CAPTION_LABELS = frozenset({"text", "figure_title", "doc_title", "paragraph_title"})


def _says_continued(block: Block) -> bool:
    return block.label in _CAPTION_LABELS and any(k in block.text.lower() for k in _CONTINUED)


def _width(block: Block) -> int:
    return block.bbox[2] - block.bbox[0]


def repeated_header_rows(first: Table, second: Table, most: int = 5) -> int:
    """How many leading rows (at most `most`) the second table repeats from the first: same
    number of cells, same texts (whitespace and full/half width aside), same colspans."""
    n = 0
    for a, b in zip(first[:most], second[:most]):
        if len(a) != len(b) or any(cell_key(x) != cell_key(y) or x.colspan != y.colspan for x, y in zip(a, b)):
            break
        n += 1
    return n


def _tables_continue(first: Table, second: Table) -> bool:
    """Same width counting spans, or the first table's last row and the second's first row
    after repeated headers have the same width or the same number of cells."""
    if total_columns(first) == total_columns(second):
        return True
    skip = repeated_header_rows(first, second)
    if not first or len(second) <= skip:
        return False
    last, next_row = first[-1], second[skip]
    return sum(c.colspan for c in last) == sum(c.colspan for c in next_row) or len(last) == len(next_row)


def _continuation(prev_page: Sequence[Block], page: Sequence[Block]) -> tuple[int, int, str] | None:
    """(index in prev_page, index in page, merged HTML) when the first table of `page`
    continues the last table of `prev_page`."""
    ends = [i for i, b in enumerate(prev_page) if b.label == "table"]
    starts = [i for i, b in enumerate(page) if b.label == "table"]
    if not ends or not starts:
        return None
    i, j = ends[-1], starts[0]
    a, b = prev_page[i], page[j]
    wa, wb = _width(a), _width(b)
    if wa <= 0 or wb <= 0 or abs(wa - wb) / min(wa, wb) >= 0.1:
        return None
    if not all(x.label in _AFTER_TABLE for x in prev_page[i + 1 :]):
        return None
    if not all(x.label in _BEFORE_TABLE or _says_continued(x) for x in page[:j]):
        return None
    first, second = parse_table_html(a.text), parse_table_html(b.text)
    if a.format != "html" or b.format != "html" or first is None or second is None:
        return None
    if not _tables_continue(first, second):
        return None
    return i, j, table_html(first + second[repeated_header_rows(first, second) :])


def merge_tables_across_pages(pages: Sequence[Sequence[Block]]) -> list[list[Block]]:
    """The pages' blocks with each table that runs over a page break joined onto the table it
    continues (the repeated header rows dropped); the continuation keeps its place with empty
    text. A table over several pages ends up whole on its first page. The input is not changed."""
    out = [list(page) for page in pages]
    for p in range(len(out) - 1, 0, -1):  # from the end, so a chain collects onto its first page
        found = _continuation(out[p - 1], out[p])
        if found is not None:
            i, j, merged = found
            out[p - 1][i] = dataclasses.replace(out[p - 1][i], text=merged)
            out[p][j] = dataclasses.replace(out[p][j], text="")
    return out


def pages_markdown(
    pages: Sequence[Sequence[Block]],
    *,
    merge_tables: bool = True,
    ignore: Iterable[str] = MARKDOWN_IGNORE_LABELS,
    formula_numbers: bool = False,
) -> list[str]:
    """Each page's Markdown for one document's consecutive pages, tables merged across pages
    unless `merge_tables` is off."""
    if merge_tables:
        pages = merge_tables_across_pages(pages)
    ignore = frozenset(ignore)
    return [page_markdown(page, ignore=ignore, formula_numbers=formula_numbers) for page in pages]


# -- a document -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkdownOptions:
    merge_tables: bool = True  # join tables that run over a page break
    ignore_labels: frozenset[str] = MARKDOWN_IGNORE_LABELS  # kept in the blocks, left out of Markdown
    formula_numbers: bool = False  # put formula numbers on their formula as \tag*{n}


@dataclass(frozen=True)
class PageText:
    """One page as a document's Markdown sees it: a read page's text, or (layout mode) its blocks,
    from which its Markdown is made again so that tables merge across pages; or its error."""

    number: int | None = None  # None: no page comments (a batch of pages, not a numbered document)
    text: str = ""
    blocks: Sequence[Block] | None = None
    error: str | None = None  # "type: message"


def document_markdown(pages: Sequence[PageText], options: MarkdownOptions = MarkdownOptions()) -> str:
    """One document's Markdown, pages in the order given. Numbered pages are each introduced by an
    HTML comment (invisible when rendered, easy to split on), a failed one by a comment saying
    why; unnumbered ones are joined by blank lines. Tables merge within runs of consecutive pages
    with blocks (a failed, blank or missing page in between breaks a run)."""
    texts = [p.text for p in pages]
    run: list[int] = []

    def flush() -> None:
        made = pages_markdown([pages[i].blocks or () for i in run], merge_tables=options.merge_tables,
                              ignore=options.ignore_labels, formula_numbers=options.formula_numbers)
        for i, text in zip(run, made):
            texts[i] = text
        run.clear()

    for i, page in enumerate(pages):
        readable = page.error is None and bool(page.blocks)
        follows = run and (page.number is None or pages[run[-1]].number == page.number - 1)
        if not (readable and follows):
            flush()
        if readable:
            run.append(i)
    flush()
    if all(p.number is None for p in pages):
        return "\n\n".join(t for p, t in zip(pages, texts) if p.error is None and t)
    parts = []
    for page, text in zip(pages, texts):
        if page.error is None:
            parts.append(f"<!-- page {page.number} -->\n\n{text.strip()}\n")
        else:
            parts.append(f"<!-- page {page.number}: {page.error.replace('--', '- -')} -->\n")  # no "--" in a comment
    return "\n".join(parts)


# -- image files --------------------------------------------------------------------------------


def image_filename(page: int, block: Block) -> str:
    """File name of a block's saved crop: page and block number, then the label."""
    return f"p{page:04d}_{block.id:03d}_{block.label}.png"


def default_images_dir(markdown_path: Path) -> Path:
    """Where crops go without --images: `NAME_images/` beside `NAME.md`."""
    return markdown_path.with_name(markdown_path.name.removesuffix(".md") + "_images")


def image_link(markdown_path: Path, image_path: Path) -> str:
    """The link to an image file from a Markdown file: relative, with forward slashes."""
    return Path(os.path.relpath(image_path, markdown_path.parent)).as_posix()
