"""TEMPORARY (revert this commit once batch/ imports documents/): scan.py's old import path."""

from ppvl_batch.documents.blank import is_blank  # noqa: F401
