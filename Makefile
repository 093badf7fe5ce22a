# MegaLive — `make test` runs the suite, `make demo` (later) the main job. Both create .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0

.PHONY: test install-dev bench clean

# torch first, so pip takes the local CPU build instead of a CUDA one from the registry.
$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	touch $@

install-dev: $(VENV)/.installed-dev

test: install-dev
	$(PY) -m pytest -q

# The README's runtime figures: the contract model at 256×256, then the bench (figures also in runs/bench.json).
bench: install-dev
	$(VENV)/bin/megalive-train contract-model --out runs/contract.onnx --resolution 256
	$(VENV)/bin/megalive bench --model runs/contract.onnx --seconds 10 --json runs/bench.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
