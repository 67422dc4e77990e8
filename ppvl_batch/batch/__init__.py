"""documents -> records: planning, the per-page work, recording, and the executors that run it.

    options.py    ScanOptions (what to do), Summary (what was done)
    plan.py       which pages to read, skip or copy, and their checkpoint keys
    work.py       one page: render, prepare, vision, decode -> its record (never raises for a bad page)
    records.py    the JSONL record and its key
    review.py     the needs_review rules (hard flags, confidence thresholds)
    journal.py    the resume checkpoint on disk, torn-tail repair, the output lock
    hashcache.py  file hashes remembered by (path, size, mtime, ctime, inode)
    markdown.py   a document's Markdown
    recorder.py   the one writer: records, summary, progress, Markdown
    progress.py   messages and the progress bar on stderr
    local.py      the local executor: a rasterizer thread and the model thread
    session.py    the setup both executors share: writer, hash cache, recognizer, planner, recorder
    ray_scan.py   the Ray executor: the same plan, work and recorder over a cluster
    ray_executor.py  Ray Data underneath: the worker pool, retries, poison pages, the driver's dedup
    ray_cluster.py   reaching Ray: the --ray options, connecting, a worker's thread limits
    layout_mode.py   scan in layout mode: the detector and parser behind PageWork
"""
