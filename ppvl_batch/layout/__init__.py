"""Document parsing: layout blocks in reading order, each read with its own prompt, assembled into Markdown."""
