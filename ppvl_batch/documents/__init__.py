"""Paths -> page images.

    inputs.py   command-line paths, folders, globs, stdin lists -> InputFile (one found file each)
    pages.py    an InputFile's path -> OpenDocument (PDF or image) -> RGB page images; PageError types
    images.py   image helpers without PyMuPDF: any PIL image -> 8-bit RGB, the formats we read
    blank.py    is a page blank (no ink), judged from its pixels
    text_layer.py  a PDF page's own text: trusted or not, its text and line boxes (text_order.py: reading order)
    mupdf.py    PyMuPDF, imported without the extras it would pull in
"""
