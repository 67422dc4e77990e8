"""Character error rate of the demo model on held-out synthetic pages and on sample_docs.

    .venv/bin/python tools/eval_cer.py --checkpoint tools/work/demo/checkpoint   # transformers generate
    .venv/bin/python tools/eval_cer.py --bundle ppvl_batch/demo                  # our Recognizer (llama.cpp)

CER = total edit distance / total reference characters, over all pages of a set. Held-out pages
come from a seed the trainer never draws from (new text: word combinations, pseudo-words,
numbers, dates). sample_docs pages are rendered the way the scanner renders them
(ppvl_batch.documents.pages: PDFs at the zoom that fills max_pixels) and compared with X.gt.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo import Encoder, cer, edit_distance, heldout_pages, read_pages  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
Reader = Callable[[list[Image.Image]], list[str]]


def sample_doc_pages(root: Path, max_pixels: int) -> list[tuple[str, Image.Image, str]]:
    """(label, page image, ground truth) for every page of every document under root."""
    sys.path.insert(0, str(ROOT))
    from ppvl_batch.documents.pages import open_document

    out = []
    for gt_path in sorted(root.rglob("*.gt.json")):
        doc_path = next(p for p in gt_path.parent.iterdir() if p.name.startswith(gt_path.name[: -len(".gt.json")] + ".")
                        and not p.name.endswith(".gt.json"))
        truth = json.loads(gt_path.read_text())["pages"]
        doc = open_document(doc_path, max_pixels=max_pixels)
        try:
            for n, text in enumerate(truth, 1):
                out.append((f"{doc_path.relative_to(root)}#{n}", doc.render(n), text))
        finally:
            doc.close()
    return out


def transformers_reader(checkpoint: Path) -> tuple[Reader, int]:
    import torch
    from transformers import PaddleOCRVLForConditionalGeneration

    torch.set_num_threads(2)
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    enc = Encoder(checkpoint)
    max_pixels = json.loads((checkpoint / "preprocessor_config.json").read_text())["max_pixels"]
    return (lambda images: read_pages(model, enc, images)), max_pixels


def recognizer_reader(bundle: str, vision_dtype: str = "auto") -> tuple[Reader, int]:
    sys.path.insert(0, str(ROOT))
    from ppvl_batch.recognizer import Recognizer

    rec = Recognizer.load(model=bundle, dtype=vision_dtype)

    def read(images: list[Image.Image]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), 16):  # bounded vision batches
            out += [r.text for r in rec.recognize(images[i:i + 16], task="ocr", max_new_tokens=160)]
        return out

    return read, rec.max_pixels


def evaluate(read: Reader, max_pixels: int, n_heldout: int, sample_docs: Path, show: int) -> dict[str, float]:
    results: dict[str, float] = {}
    t = time.time()
    pages = heldout_pages(n_heldout)
    hyps = read([p.image for p in pages])
    results["heldout_cer"] = cer(hyps, [p.text for p in pages])
    results["heldout_pages"] = len(pages)
    results["heldout_s"] = round(time.time() - t, 1)
    for p, h in list(zip(pages, hyps))[:show]:
        print(f"  {p.text!r}\n  -> {h!r}")
    t = time.time()
    docs = sample_doc_pages(sample_docs, max_pixels)
    hyps = read([img for _, img, _ in docs])
    results["sample_docs_cer"] = cer(hyps, [gt for _, _, gt in docs])
    results["sample_docs_pages"] = len(docs)
    results["sample_docs_s"] = round(time.time() - t, 1)
    for (label, _, gt), h in zip(docs, hyps):
        print(f"  {label}: {edit_distance(h, gt)}/{len(gt)} edits  -> {h!r}")
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="HF-layout checkpoint, read with transformers generate")
    src.add_argument("--bundle", help="ppvl-ocr bundle (or 'demo'), read with ppvl_batch.recognizer")
    ap.add_argument("--vision-dtype", default="auto", help="with --bundle: as ppvl-ocr's --vision-dtype")
    ap.add_argument("--heldout", type=int, default=200, help="number of held-out synthetic pages")
    ap.add_argument("--sample-docs", type=Path, default=ROOT / "sample_docs")
    ap.add_argument("--show", type=int, default=3, help="print this many held-out readings")
    args = ap.parse_args(argv)
    read, max_pixels = transformers_reader(args.checkpoint) if args.checkpoint else recognizer_reader(args.bundle, args.vision_dtype)
    print(json.dumps(evaluate(read, max_pixels, args.heldout, args.sample_docs, args.show), indent=2))


if __name__ == "__main__":
    main()
