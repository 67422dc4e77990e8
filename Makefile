# The two commands of the README: `make demo` and `make test`. Both set up .venv from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo lint test clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# llama-cpp-python compiles llama.cpp (3-4 minutes on 2 cores); CMAKE_ARGS picks CUDA/Metal.
	$(PY) -m pip install --quiet -e '.[serve,test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ppvl-ocr scan sample_docs -o out.jsonl --markdown out-md
	@echo "--- first records of out.jsonl ---"
	@head -n 3 out.jsonl | $(PY) -c 'import sys, json; [print(json.dumps({k: r[k] for k in ("source", "page", "status", "text")}, ensure_ascii=False)) for r in map(json.loads, sys.stdin)]'

# Tesseract and Ghostscript for OCRmyPDF (tests/test_ocrmypdf_plugin.py): installed when missing, or named.
system-deps:
	bash tools/system_deps.sh

# ruff and mypy (configured in pyproject.toml); `test` runs them first.
lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy ppvl_batch

test: install system-deps
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy ppvl_batch
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) out.jsonl out-md
