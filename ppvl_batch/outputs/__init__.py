"""Document outputs made from records: words split from lines (words.py), and the searchable PDF, hOCR and
ALTO writers of one document (docs/archival-outputs.md)."""
