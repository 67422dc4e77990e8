"""ppvl-ocr: batch document OCR with PaddleOCR-VL (PyTorch vision encoder + llama.cpp decoder).

Pipeline, one module per stage:

    inputs.py   paths, folders, globs, stdin lists  ->  documents
    pages.py    documents (PDF, images)             ->  page images (PIL)
    vision.py   page images                          ->  image embeddings (PyTorch)
    decoder.py  embeddings + prompt                  ->  text (llama.cpp, M-RoPE positions)
    outputs.py  results                              ->  JSONL, Markdown, resume state

recognizer.py ties vision and decoder into the library API; convert.py builds model bundles;
bundle.py reads them; cli.py is the command line on top.
"""

__version__ = "0.1.0"
