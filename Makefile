# MegaLive — `make demo` is the main job, `make test` the suite. Both create .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0
STUDENT_STEPS ?= 4000
ADAPTER_STEPS ?= 800
TEACHER_STEPS ?= 4000

BIN    := $(VENV)/bin

.PHONY: demo test lint install install-dev bench bench-hardening default-model teacher-cpu clean

# torch first, so pip takes the local CPU build instead of a CUDA one from the registry.
$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	touch $@

install-dev: $(VENV)/.installed-dev

# The runtime alone (no torch): what `make demo` needs.
$(VENV)/.installed-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

install: $(VENV)/.installed-runtime

# Streams the shipped driver clip through a local server to the 8 shipped avatars: out/demo.mp4, out/demo.png.
demo: install
	$(BIN)/megalive demo --out out

test: install-dev
	$(PY) -m pytest -q

# ruff's checks and its formatter (pyproject.toml [tool.ruff]), pinned with its checksum.
$(VENV)/.installed-lint: requirements-lint.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements-lint.txt
	touch $@

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The README's runtime figures: the contract model at 256×256, then the bench (figures also in runs/bench.json).
bench: install-dev
	$(VENV)/bin/megalive-train contract-model --out runs/contract.onnx --resolution 256
	$(VENV)/bin/megalive bench --model runs/contract.onnx --seconds 10 --json runs/bench.json

# The README's hardening figures: 8 streaming clients, 2 clients that never read, a bomb stream, CURVE's cost (about 4 min).
bench-hardening: install-dev
	$(PY) bench/server_hardening.py --json runs/hardening.json

# The shipped default model, exactly as it was made (README: "The default model"). Hours on 2 CPU cores.
default-model: install-dev
	rm -rf runs/synth-256 runs/student-cpu256 runs/adapter-arkit runs/adapter-landmarks
	$(BIN)/megalive-train synth runs/synth-256 --resolution 256 --avatars 8 --drivers 200 --pairs 8000
	$(BIN)/megalive-train student --data runs/synth-256 --run runs/student-cpu256 --preset cpu256 --steps $(STUDENT_STEPS) --batch 8
	$(BIN)/megalive-train adapter --kind arkit --student runs/student-cpu256/checkpoint.pt --data runs/synth-256 --run runs/adapter-arkit --steps $(ADAPTER_STEPS)
	$(BIN)/megalive-train adapter --kind landmarks --student runs/student-cpu256/checkpoint.pt --data runs/synth-256 --run runs/adapter-landmarks --steps $(ADAPTER_STEPS)
	$(BIN)/megalive-train export --checkpoint runs/student-cpu256/checkpoint.pt --out assets/default/student.onnx --preset cpu256 \
		--adapter runs/adapter-arkit/checkpoint.pt --adapter runs/adapter-landmarks/checkpoint.pt
	$(BIN)/megalive-train demo-clip --out assets/default/driver.mp4 --resolution 256
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions random
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips --driver arkit
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips --driver landmarks

# The CPU recipe of the teacher (README: "The teacher on two CPU cores"): the cpu128 base model on SyntheticHeads pairs
# (about 1 h 45 min on the 2-core box), the benchmark's parameter regressor, then the benchmark: the teacher on held-out
# identities, and teacher beside the default student on the student's avatars (runs/synth-256, made as in default-model).
teacher-cpu: install-dev
	rm -rf runs/teacher-cpu128 runs/regressor
	$(BIN)/megalive-train base --preset cpu128 --steps $(TEACHER_STEPS) --batch 2 --run runs/teacher-cpu128 --checkpoint-every 250
	$(BIN)/megalive-train regressor --out runs/regressor/regressor.pt
	$(BIN)/megalive-train eval --model runs/teacher-cpu128/checkpoint.pt --regressor runs/regressor/regressor.pt --sources 16 --out docs/teacher-cpu128/held-out
	$(BIN)/megalive-train eval --model runs/teacher-cpu128/checkpoint.pt --regressor runs/regressor/regressor.pt --sources 16 --out docs/teacher-cpu128/held-out --motions random
	test -f runs/synth-256/avatars.npz || $(BIN)/megalive-train synth runs/synth-256 --resolution 256 --avatars 8 --drivers 200 --pairs 8000
	$(BIN)/megalive-train eval --model runs/teacher-cpu128/checkpoint.pt --data runs/synth-256 --regressor runs/regressor/regressor.pt --out docs/teacher-cpu128/avatars
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --regressor runs/regressor/regressor.pt --out docs/teacher-cpu128/student-avatars
	$(BIN)/megalive-train eval-table docs/teacher-cpu128/avatars/eval-clips.json docs/teacher-cpu128/student-avatars/eval-clips.json --out docs/teacher-cpu128/side-by-side.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
