"""The bundled demo model (issue 5) reads every sample_docs document within the CER bound.

Greedy decoding is deterministic, so this is a plain assertion, not a statistical one. Pages are
rendered the way the scanner renders them (ppvl_batch.documents.pages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_demo import edit_distance  # tools/ (on the path through conftest): one CER for training and tests

from ppvl_batch.documents.pages import open_document
from ppvl_batch.recognizer import Recognizer

SAMPLES = Path(__file__).resolve().parents[1] / "sample_docs"
MAX_CER = 0.05  # issue 5: at most 5% on the pages of sample_docs
DOCUMENTS = sorted(SAMPLES.rglob("*.gt.json"))


def document_for(gt: Path) -> Path:
    stem = gt.name[: -len(".gt.json")]
    return next(p for p in gt.parent.iterdir() if p.stem == stem and not p.name.endswith(".gt.json"))


@pytest.fixture(scope="module")
def demo() -> Recognizer:
    with Recognizer.load("demo") as rec:
        yield rec


def test_sample_docs_has_every_kind() -> None:
    kinds = {document_for(gt).suffix for gt in DOCUMENTS}
    assert {".pdf", ".png", ".jpg", ".tiff"} <= kinds
    assert any(len(gt.relative_to(SAMPLES).parts) > 2 for gt in DOCUMENTS)  # nested folders


@pytest.mark.parametrize("gt", DOCUMENTS, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_demo_reads_sample_document(demo: Recognizer, gt: Path) -> None:
    truth = json.loads(gt.read_text(encoding="utf-8"))["pages"]
    doc = open_document(document_for(gt), max_pixels=demo.max_pixels)
    try:
        assert doc.page_count == len(truth)
        images = [doc.render(n) for n in range(1, doc.page_count + 1)]
    finally:
        doc.close()
    texts = [r.text for r in demo.recognize(images, task="ocr")]
    edits = sum(edit_distance(t, g) for t, g in zip(texts, truth))
    cer = edits / sum(len(g) for g in truth)
    assert cer <= MAX_CER, f"CER {cer:.3f}: read {texts!r}, expected {truth!r}"
