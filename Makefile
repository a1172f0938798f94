# One-command set-up: `make demo` (run the pipeline on a bundled sample) and `make test`.
# Both create .venv and install everything on first use; later runs reuse it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: setup test test-fast demo clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

# The pure tests only (no model, training, Ray or torchrun run): under 2 minutes on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
