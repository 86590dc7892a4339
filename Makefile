# `make demo` and `make test` are the two README commands; each sets up everything it needs.
PYTHON ?= python3
VENV := .venv
DATA ?= ../shared/data/medmnist
# Python writes each module's bytecode the first time it is imported, even where PYTHONDONTWRITEBYTECODE is set (the
# __pycache__ folders it adds under src/ and tests/ are ignored by git). The install compiles none: compiling all 23,500
# files of the dev extras took about 55 s on the 2-core machine, and the suite imports 6,650 of them.
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE=

$(VENV)/.installed: pyproject.toml tools/install
	$(PYTHON) -m venv $(VENV)
	tools/install $(VENV) dev
	touch $@

# Headless Chromium renders the HTML report in its test, and chromium-driver lets the serve page's test upload a file
# (Debian packages; skipped where they are already present).
chromium:
	@(command -v chromium && command -v chromedriver) >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "could not install chromium (needs root): the HTML report screenshot test will fail"

demo: $(VENV)/.installed
	$(WRITE_BYTECODE) $(VENV)/bin/medprobe run --dataset retinamnist --data-dir $(DATA) --probe logreg --out runs/retinamnist

test: $(VENV)/.installed chromium
	$(WRITE_BYTECODE) $(VENV)/bin/python -m pytest

.PHONY: demo test chromium
