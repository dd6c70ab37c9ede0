# Two commands do all the set-up: `make zoo` (the main job) and `make test`. Each creates the venv and installs
# the core, the first-party plugins and the test extras the first time (again when a pyproject.toml changes).
# MNIST is read from ../shared/datasets when it sits beside the clone, else from $ADAPTERS_DATA; with neither,
# torchvision downloads it.

VENV ?= .venv
PYTHON ?= python3
PLUGINS := lora mnist formats lycoris dora ia3 hf
INSTALL := -e ".[test]" $(foreach p,$(PLUGINS),-e plugins/adapterhub-lite-$(p))
ADAPTERS_DATA ?= $(if $(wildcard ../shared/datasets/MNIST/raw),$(abspath ../shared/datasets),)
ifneq ($(ADAPTERS_DATA),)
export ADAPTERS_DATA
endif

.PHONY: zoo test test-slow install

zoo: $(VENV)/.installed  ## the main job: build the zoo's experiments (quick profile) into ./zoo
	$(VENV)/bin/adapters zoo build --quick

test: $(VENV)/.installed  ## the default test suite (the long MNIST reproductions are `make test-slow`)
	$(VENV)/bin/python -m pytest

test-slow: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m slow

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(foreach p,$(PLUGINS),plugins/adapterhub-lite-$(p)/pyproject.toml)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(INSTALL)
	touch $@
