"""ppvl-ocr: batch document OCR with PaddleOCR-VL (PyTorch vision encoder + llama.cpp decoder).

Pipeline, one module per stage:

    inputs.py              paths, folders, globs, stdin lists  ->  documents
    pages.py               documents (PDF, images)             ->  page images (PIL)
    engine/vision.py       page images                         ->  image embeddings (PyTorch)
    engine/llama.py,       embeddings + prompt                 ->  text (llama.cpp, M-RoPE positions)
      engine/generate.py
    outputs.py             results                             ->  JSONL, Markdown, resume state

engine/recognizer.py ties vision and decoder into the library API (imported as
ppvl_batch.recognizer); convert.py builds model bundles; bundle.py reads them; cli.py is the
command line on top; serve/ the server and its client; compare/ llama.cpp's own vision path.
"""

__version__ = "0.1.0"
