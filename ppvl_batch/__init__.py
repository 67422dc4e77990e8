"""ppvl-ocr: batch document OCR with PaddleOCR-VL (PyTorch vision encoder + llama.cpp decoder).

The package, one line per layer (front-ends at the top; each imports only what is below it):

    cli/        the `ppvl-ocr` click commands, thin: convert, inspect, scan, serve, ask
    batch/      documents -> records: planning and skipping, one page's work, journals, Markdown, executors
    serve/      the OpenAI-compatible server (app, worker, request checks, images, metrics) and its client
    convert/    checkpoint -> bundle: the decoder GGUF, vision safetensors, tokenizer checks, layout model
    outputs/    records -> document outputs: searchable PDF, hOCR, ALTO (words split from lines)
    engine/     one page in, text out: prompt, tokenizer, vision (PyTorch), llama.cpp decoding, Recognizer
    layout/     layout detection: page -> blocks in reading order, their prompts and Markdown
    bundle/     the model on disk: the bundle reader, its manifest, vision safetensors, `inspect`
    documents/  paths -> page images: finding input files, opening PDFs and images, blank pages
    compare/    llama.cpp's own vision path (libmtmd), for tests and benchmarks only
    errors.py   the error classes and the one exit-code table
    config.py   settings from ppvl-ocr.toml and the environment
    files.py    crash-safe file writes (atomic replace, fsync)
    hf.py       transformers, adapted: the one module that imports it
"""

__version__ = "0.1.0"
