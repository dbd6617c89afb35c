# nmkit: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nmkit-installed
PYTEST_ARGS ?= -m "not slow" -n 2 --dist loadgroup

.PHONY: install demo test test-slow clean

$(STAMP): pyproject.toml setup.py Makefile $(wildcard src/nmkit/*/*.c src/nmkit/*/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Exactly this torch: a looser range pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,nnunet]"
	# nnU-Net v2 without its dependency list: dynamic-network-architectures asks for timm -> torchvision -> a CUDA
	# torch; timm is only used by its Primus/Eva networks. Their other dependencies come with the [nnunet] extra.
	$(PY) -m pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nmkit demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) demo-output .pytest_cache
