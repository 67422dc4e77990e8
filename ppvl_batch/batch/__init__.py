"""documents -> records: planning, the per-page work, recording, document outputs, and the
executors that only schedule it.

    options.py       ScanOptions (the request) and its narrow views; Summary (what was done)
    task.py          PageTask (one page's work, picklable, key carried) and Rendered (a page on its way)
    records.py       the JSONL record: build_record (the one builder), RunFields, checkpoint keys
    review.py        the needs_review rules (hard flags, confidence thresholds)
    plan.py          which pages to read, skip or copy, and their checkpoint keys (computed once)
    strategy.py      page strategies chosen when the session opens: the plan, WholePage
    layout_mode.py   the layout strategy: pages parsed block by block (DocumentParser)
    work.py          one page's work for both executors: render, read (via the strategy), record
    journal.py       the resume checkpoint on disk, torn-tail repair, the output lock
    hashcache.py     file hashes remembered by (path, size, mtime, ctime, inode)
    outputs.py       document outputs written from the journal (DocumentWriter)
    markdown.py      the Markdown writer (layout.markdown.document_markdown underneath)
    recorder.py      the one writer: records, summary, progress, document outputs
    progress.py      messages and the progress bar on stderr
    session.py       the setup both executors share: strategy, writer, hash cache, recognizer, planner
    local.py         the local executor: a rasterizer thread and the model thread
    ray_scan.py      the Ray executor: the same plan, work and recorder over a cluster
    ray_executor.py  Ray Data underneath: the dataset, the worker pool, the driver's dedup
    ray_worker.py    the Ray worker actor: retries, poison pages, the errors that stop a job
    ray_cluster.py   reaching Ray: the --ray options, connecting, signals, a worker's thread limits
"""
