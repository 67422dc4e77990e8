"""TEMPORARY (revert this commit once batch/ imports documents/): scan.py's and hashcache.py's old import path."""

from ppvl_batch.documents.pages import OpenDocument as Document, PageError, PageRanges, classify_error, file_sha256, open_document  # noqa: F401
