"""PDF/A-2b from a written searchable PDF, through pikepdf's `pdfa` support (the `pdfa` extra).

PyMuPDF cannot write PDF/A; `pikepdf.pdfa.save` prepares the document (output intent, XMP metadata,
annotation flags), writes it and validates the bytes it wrote, refusing with the rules it broke. An input
that cannot become PDF/A (encryption, transparency groups or fonts the validator does not accept, ...) is
refused with PdfaError: the caller keeps the plain PDF.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputError

FLAVOUR = "2b"


class PdfaError(OutputError):
    """A PDF that cannot be made PDF/A; the plain searchable PDF is written instead."""


def make_pdfa(plain: Path, target: Path, *, encrypted: bool = False) -> None:
    """Write `plain` as PDF/A-2b to `target`, or raise PdfaError saying why not."""
    if encrypted:
        raise PdfaError("not PDF/A: the input is encrypted, and PDF/A forbids encryption (plain PDF written)")
    try:
        import pikepdf
        import pikepdf.pdfa
    except ImportError as e:
        raise PdfaError(f"--pdfa needs pikepdf with its pdfa extra (pip install 'ppvl-batch[pdfa]'): {e}") from e
    try:
        with pikepdf.open(plain) as pdf:
            # MuPDF writes its Producer as an /Info entry in the catalog of the documents it creates, a key
            # the catalog does not have (the validator refuses it); the trailer's Info is its place.
            if "/Info" in pdf.Root:
                del pdf.Root["/Info"]
            pikepdf.pdfa.save(pdf, target, FLAVOUR)
    except pikepdf.pdfa.PdfaError as e:
        broken = [f"{f.rule}: {f.message}" for f in e.report.findings[:3]]
        more = len(e.report.findings) - len(broken)
        said = "; ".join(broken) + (f" (and {more} more)" if more > 0 else "")
        raise PdfaError(f"not PDF/A-{FLAVOUR} (plain PDF written): {said}") from e
    except (pikepdf.PdfError, ValueError) as e:
        raise PdfaError(f"not PDF/A-{FLAVOUR} (plain PDF written): {e}") from e
