# make install | test | test-fast | demo | lint | bench | clean
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# CPU torch from the local wheel; set TORCH= to keep a torch you installed (CUDA, MUSA) with SYSTEM_SITE=1
TORCH ?= torch==2.13.0
SYSTEM_SITE ?= 0
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_SITE)),--system-site-packages,)

.PHONY: install test test-fast demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(TORCH),$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)",true)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,demo]"
	touch $@

test: install
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow"

demo: install
	$(PY) -m mooer.demo.run

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/pack.py
	$(PY) benchmarks/dataloader.py
	$(PY) benchmarks/model.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/gpu.py --tiny --device cpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache logs outputs demo_out
