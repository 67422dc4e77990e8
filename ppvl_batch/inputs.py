"""TEMPORARY (revert this commit once batch/ imports documents/): scan.py's old import path."""

from ppvl_batch.documents.inputs import InputFile as Document, Inputs, collect  # noqa: F401
