"""outputs/alto.py: ALTO 4.4, validated against the official schema kept in tests/data/alto (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from outputs_helpers import LINES, blank_record, failed_record, line, ok_record, rotated_line

from ppvl_batch.outputs import AltoWriter, write_alto

DATA = Path(__file__).resolve().parent / "data" / "alto"
NS = {"a": "http://www.loc.gov/standards/alto/ns-v4#"}
XLINK_URL = "http://www.loc.gov/standards/xlink/xlink.xsd"


class _LocalXlink(etree.Resolver):
    """The ALTO schema imports XLink's schema from loc.gov: answer with the local one, never the network."""

    def resolve(self, url, pubid, context):
        if url == XLINK_URL:
            return self.resolve_filename(str(DATA / "xlink.xsd"), context)
        assert not url.startswith(("http:", "https:")), f"the schema asked for {url}"
        return None  # a local file: lxml reads it


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_LocalXlink())
    return etree.XMLSchema(etree.parse(str(DATA / "alto-4-4.xsd"), parser))


def document_records() -> list[dict]:
    lines = [line(text, box) for text, box in LINES] + [rotated_line("tilted line", (100, 400), 300, 30, 15)]
    layout = ok_record(4, 800, 600, None, text="# T", blocks=[
        {"label": "doc_title", "bbox": [60, 40, 500, 90], "text": "A Title", "format": "text",
         "polygon": [[60, 40], [500, 40], [500, 90], [60, 90]]},
        {"label": "text", "bbox": [60, 100, 500, 300], "text": "two\nlines \"<&>\"", "format": "text"},
    ])
    return [ok_record(1, 800, 600, lines), failed_record(2), blank_record(3, 800, 600), layout]


def write(tmp_path: Path, records: list[dict]) -> etree._ElementTree:
    target = tmp_path / "doc.alto.xml"
    AltoWriter().write(records, tmp_path / "doc.tif", target)
    assert AltoWriter.suffix == ".alto.xml"
    return etree.parse(str(target))


def test_it_validates_against_the_alto_4_4_schema(tmp_path: Path, schema: etree.XMLSchema) -> None:
    tree = write(tmp_path, document_records())
    assert schema.validate(tree), schema.error_log
    only_failed = write(tmp_path, [failed_record(1)])
    assert schema.validate(only_failed), schema.error_log
    # the schema is not vacuous: a String without its required CONTENT is refused
    del tree.find(".//a:String", NS).attrib["CONTENT"]
    assert not schema.validate(tree)


def test_pages_blocks_lines_strings(tmp_path: Path) -> None:
    tree = write(tmp_path, document_records())
    assert tree.findtext("a:Description/a:MeasurementUnit", namespaces=NS) == "pixel"
    step = tree.findtext(".//a:Processing/a:processingStepDescription", namespaces=NS)
    assert "estimated" in step and "Word boxes" in step
    pages = tree.findall(".//a:Page", NS)
    assert [(p.get("ID"), p.get("PHYSICAL_IMG_NR"), p.get("PC")) for p in pages] == [
        ("page_1", "1", "0.9000"), ("page_2", "2", None), ("page_3", "3", None), ("page_4", "4", "0.9000")]
    assert [len(p.findall(".//a:String", NS)) for p in pages] == [15, 0, 0, 5]
    first = pages[0].find(".//a:String", NS)
    assert {k: first.get(k) for k in ("CONTENT", "HPOS", "VPOS", "WIDTH", "HEIGHT", "WC")} == {
        "CONTENT": "Searchable", "HPOS": "60", "VPOS": "50", "WIDTH": "160", "HEIGHT": "30", "WC": "0.9000"}
    text_line = pages[0].find(".//a:TextLine", NS)
    assert [etree.QName(e).localname for e in text_line] == ["String", "SP", "String", "SP", "String"]
    # the rotated line carries its quad
    tilted = pages[0].findall(".//a:TextLine", NS)[-1]
    assert len(tilted.find("a:Shape/a:Polygon", NS).get("POINTS").split()) == 4
    tags = {t.get("ID"): t.get("LABEL") for t in tree.findall(".//a:Tags/a:LayoutTag", NS)}
    assert tags == {"TAG_doc_title": "doc_title", "TAG_text": "text"}
    blocks = pages[3].findall(".//a:TextBlock", NS)
    assert [b.get("TAGREFS") for b in blocks] == ["TAG_doc_title", "TAG_text"]
    assert blocks[0].find("a:Shape/a:Polygon", NS).get("POINTS") == "60,40 500,40 500,90 60,90"
    assert [s.get("CONTENT") for s in blocks[1].iter(f"{{{NS['a']}}}String")] == ["two", "lines", '"<&>"']


def test_unwritable_target(tmp_path: Path) -> None:
    from ppvl_batch.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        write_alto(document_records(), tmp_path / "doc.tif", tmp_path / "file" / "doc.alto.xml")
