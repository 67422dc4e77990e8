"""Synthetic printed-text pages for the demo model: PIL prints a few short lines, typewriter
style (one character per 28 x 28 cell, the area of one image token), in one of several printed
fonts and sizes, on grey paper, with light noise, a slight rotation and sometimes a little blur.
Each page comes with its text and the centre of every character (for training-only losses).

Fonts come from the Debian packages fonts-dejavu-core and fonts-liberation
(`apt-get install -y fonts-dejavu-core fonts-liberation`), installed under
/usr/share/fonts/truetype. Only the trainer, the held-out evaluation and make_sample_docs.py need
them; the tests use the committed bundle and sample_docs.

    page = render_page(random.Random(7))      # -> Page(image, text, font, size, centers)
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype")
# Regular weights of common document typefaces (two sans, two serif). Fewer fonts train faster
# within the CPU budget; the sample documents use these.
FONTS = [
    "dejavu/DejaVuSans.ttf",
    "dejavu/DejaVuSerif.ttf",
    "liberation/LiberationSans-Regular.ttf",
    "liberation/LiberationSerif-Regular.ttf",
]

# Printed in cells of CELL x CELL pixels, the size of one image token (patch 14 x merge 2).
CELL = 28
FONT_PX = (18, 24)
MAX_LINE_CHARS = 18
# Every page is PAGE_COLUMNS cells wide (at most MAX_ROWS high): with a fixed width the image
# columns sit at fixed M-RoPE distances from the answer, which a small model learns quickly.
PAGE_COLUMNS = 20
MAX_ROWS = 6

# Everyday document words. Held-out pages draw from the same words but are new combinations,
# with fresh pseudo-words, numbers, dates and codes that the training pages never contained.
WORDS = ["invoice", "total", "amount", "date", "page", "table", "report", "summary", "number", "name", "address", "account", "payment", "due", "item", "quantity", "price", "tax", "order", "customer", "receipt", "bill", "paid", "balance", "credit", "debit", "bank", "transfer", "reference", "note", "notes", "meeting", "agenda", "minutes", "project", "budget", "cost", "costs", "sales", "month", "year", "week", "day", "time", "hour", "office", "room", "floor", "street", "road", "city", "country", "phone", "email", "code", "id", "ref", "status", "open", "closed", "pending", "approved", "sent", "received", "delivered", "shipped", "returned", "new", "old", "first", "last", "next", "final", "draft", "copy", "letter", "memo", "form", "request", "offer", "contract", "service", "services", "product", "products", "unit", "units", "box", "boxes", "weight", "size", "color", "red", "blue", "green", "black", "white", "small", "large", "medium", "north", "south", "east", "west", "main", "please", "sign", "here", "thank", "you", "for", "your", "and", "the", "of", "to", "in", "on", "at", "by", "with", "from", "this", "that", "is", "are", "was", "will", "be", "has", "have", "not", "all", "any", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "per", "each", "only", "order", "no", "qty", "net", "gross", "vat", "discount", "subtotal", "shipping", "handling", "fee", "fees", "rate", "hours", "days", "weeks", "school", "class", "student", "teacher", "library", "book", "books", "chapter", "section", "part", "list", "item", "items", "data", "file", "files", "folder", "scan", "scanned", "printed", "print", "document", "documents", "record", "records", "archive", "store", "shop", "market", "coffee", "tea", "milk", "bread", "water", "apple", "lunch", "dinner", "breakfast", "hotel", "train", "ticket", "flight", "gate", "seat", "platform", "station", "bus", "stop", "park", "garden", "house", "home", "work", "team", "staff", "manager", "director", "client", "supplier", "vendor", "company", "limited", "group", "center", "central", "public", "private", "local", "general", "annual", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "morning", "evening", "today", "tomorrow", "yesterday"]

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_CONS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word: forces the model to read letters, not guess words."""
    return "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 4)))[: rng.randint(2, 8)]


def _word(rng: random.Random) -> str:
    w = rng.choice(WORDS) if rng.random() < 0.7 else _pseudo_word(rng)
    r = rng.random()
    if r < 0.25:
        return w.capitalize()
    if r < 0.3:
        return w.upper()
    return w


def _value(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"
    if kind == 1:
        return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 2:
        return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1990, 2030)}"
    if kind == 3:
        return str(rng.randint(0, 10 ** rng.randint(1, 6)))
    if kind == 4:
        return "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(1, 3))) + "-" + str(rng.randint(10, 99999))
    return f"{rng.randint(1, 99)}/{rng.randint(1, 99)}"


def random_line(rng: random.Random) -> str:
    """One short printed line: plain words, 'Label: value', or words with a number."""
    kind = rng.random()
    if kind < 0.4:
        parts = [_word(rng) for _ in range(rng.randint(1, 4))]
    elif kind < 0.7:
        parts = [_word(rng) + ":", _value(rng)]
    else:
        parts = [_word(rng) for _ in range(rng.randint(1, 3))]
        parts.insert(rng.randint(0, len(parts)), _value(rng))
    line = " ".join(parts)
    if rng.random() < 0.15:
        line += rng.choice(".,")
    while len(line) > MAX_LINE_CHARS:
        line = line.rsplit(" ", 1)[0] if " " in line else line[:MAX_LINE_CHARS]
    return line


CHARSET = string.ascii_letters + string.digits + ".,:-/"


def random_chars_line(rng: random.Random) -> str:
    """Groups of random characters: nothing to guess from language, only from the image."""
    groups = ["".join(rng.choice(CHARSET) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 4))]
    return " ".join(groups)[:MAX_LINE_CHARS].strip()


def random_text(rng: random.Random, max_lines: int = 4, p_random: float = 0.0) -> str:
    """A few lines; each is random characters with probability p_random, else document-like."""
    n = rng.choices([1, 2, 3, 4][:max_lines], weights=[2, 3, 3, 2][:max_lines])[0]
    return "\n".join(random_chars_line(rng) if rng.random() < p_random else random_line(rng) for _ in range(n))


@dataclass
class Page:
    image: Image.Image
    text: str
    font: str
    size: int
    # Centre (x, y) in the image of each character of `text`; None for line breaks.
    centers: list[tuple[float, float] | None]


def font_path(name: str) -> Path:
    path = FONT_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: apt-get install -y fonts-dejavu-core fonts-liberation")
    return path


def draw_text_page(
    text: str,
    font_name: str,
    size: int,
    *,
    rng: random.Random,
    background: int = 235,
    ink: int = 30,
    margin: tuple[int, int] = (1, 1),
    canvas: tuple[int, int] | None = None,
    noise: float = 0.0,
    angle: float = 0.0,
    scale: int = 1,
) -> tuple[Image.Image, list[tuple[float, float] | None]]:
    """Print `text` (lines separated by newlines) typewriter-style: one character per CELL x CELL
    square, lines one cell apart, `margin` (columns, rows) empty cells before the text.
    The canvas is whole cells (`canvas` = (columns, rows) to fix it), so the model's preprocessing
    keeps it as is and every image token shows exactly one character. `scale` prints at a
    multiple of that size (a high-resolution scan). Returns the image and each character's
    centre (None for line breaks)."""
    cell = CELL * scale
    font = ImageFont.truetype(str(font_path(font_name)), size * scale)
    lines = text.split("\n")
    cols, rows = canvas or (max(len(line) for line in lines) + 2 * margin[0], len(lines) + 2 * margin[1])
    img = Image.new("L", (cols * cell, rows * cell), background)
    draw = ImageDraw.Draw(img)
    centers: list[tuple[float, float] | None] = []
    for i, line in enumerate(lines):
        if i:
            centers.append(None)
        cy = (margin[1] + i + 0.5) * cell
        for j, ch in enumerate(line):
            cx = (margin[0] + j + 0.5) * cell
            draw.text((cx, cy), ch, font=font, fill=ink, anchor="mm")
            centers.append((cx, cy))
    if angle:
        img = img.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=background)
    if noise:
        img = _add_noise(img, rng, noise)
    return img.convert("RGB"), centers


def _add_noise(img: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    """Light Gaussian sensor noise, seeded from `rng` so pages stay reproducible."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float32)
    arr = arr + np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype("uint8"))


def render_page(rng: random.Random, text: str | None = None, max_lines: int = 4, p_random: float = 0.0) -> Page:
    """One random training/evaluation page (the trainer's curriculum sets max_lines and p_random)."""
    text = text if text is not None else random_text(rng, max_lines, p_random)
    font_name = rng.choice(FONTS)
    size = rng.randint(*FONT_PX)
    lines = text.split("\n")
    margin = (rng.randint(0, min(2, PAGE_COLUMNS - max(len(line) for line in lines))), rng.randint(0, 1))
    rows = min(MAX_ROWS, len(lines) + margin[1] + rng.randint(0, 1))  # sometimes paper below the text
    img, centers = draw_text_page(
        text, font_name, size, rng=rng, background=rng.randint(190, 255), ink=rng.randint(0, 70),
        margin=margin, canvas=(PAGE_COLUMNS, rows), noise=rng.uniform(0.0, 8.0), angle=rng.uniform(-0.5, 0.5),
    )
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return Page(img, text, font_name, size, centers)


if __name__ == "__main__":  # pragma: no cover - manual use: python tools/render_pages.py OUT_DIR [N]
    import sys

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(0)
    for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 8):
        p = render_page(r)
        p.image.save(out / f"page{i}.png")
        (out / f"page{i}.txt").write_text(p.text)
