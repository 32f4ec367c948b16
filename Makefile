# `make demo` and `make test` work on a fresh machine: each creates .venv and installs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled

.PHONY: demo demo-unlabeled test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[demo,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlpuda search --config configs/demo.yaml

demo-unlabeled: $(STAMP)
	$(BIN)/vlpuda search --config configs/demo_unlabeled.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache

# The GPU check (benchmarks/README.md): `make gpu-wheels` here fetches the wheels the bare GPU
# machine lacks into .whl/; `make gpu-check` there runs the checks and measurements (8 minutes at
# most), `make gpu-check DEVICE=cpu` is its dry run on a CPU. `make gpu-dry-run` does that dry
# run here as on the GPU machine: only that machine's packages, plus the wheels (for this Python).
DEVICE ?= cuda
GPU_DRY := runs/gpu-dry

.PHONY: gpu-wheels gpu-check gpu-dry-run

# TRY_WITH=/path/to/python3.12: also install and import the wheels with that interpreter.
gpu-wheels:
	$(PYTHON) scripts/gpu_wheels.py --dest .whl $(if $(TRY_WITH),--try-with $(TRY_WITH))

gpu-check:
	DEVICE=$(DEVICE) bash scripts/gpu_check.sh

gpu-dry-run: $(STAMP)
	rm -rf $(GPU_DRY)/env
	$(BIN)/python scripts/device_like_env.py $(GPU_DRY)/env
	$(BIN)/python scripts/gpu_wheels.py --dest $(GPU_DRY)/whl \
	    --python-version $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	DEVICE=cpu PYTHON=$(GPU_DRY)/env/bin/python WHEELS=$(GPU_DRY)/whl OUT=$(GPU_DRY)/out \
	    bash scripts/gpu_check.sh
