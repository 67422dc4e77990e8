"""`ppvl-ocr serve` (an OpenAI Chat Completions compatible OCR server) and `ppvl-ocr ask` (its client).

    app.py       the FastAPI app: routes, API key, JSON answers; binding the port, running uvicorn
    responses.py the answers' JSON in OpenAI's shapes (completion, chunk, usage, logprobs)
    stream.py    the server-sent event response of a streamed answer
    worker.py    Job and Engine: the one model thread, bounded admission, waiting jobs decoded together
    requests.py  ServeOptions, ApiError; parsing a chat request and the checks done before it joins a batch
    images.py    image URLs (data:, file://, http(s)) -> bytes -> checked RGB images
    metrics.py   Prometheus counters and histograms; the one log line per request
    client.py    `ask`: pages -> a server's answer, or the same answer from a Recognizer in this process

Nothing is re-exported here, so that importing `serve.client` (`ppvl-ocr ask --server`) does not
import the server's modules and, through them, the model's (torch).
"""
