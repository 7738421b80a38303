# make install | test | test-fast | demo | serve | lint | bench | clean
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# CPU torch from the local wheel; set TORCH= to keep a torch you installed (CUDA, MUSA) with SYSTEM_SITE=1
TORCH ?= torch==2.13.0
SYSTEM_SITE ?= 0
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_SITE)),--system-site-packages,)

.PHONY: install test test-fast demo serve lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(TORCH),$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)",true)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,demo,serve]"
	touch $@

test: install
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadscope -m "not slow"

demo: install
	$(PY) -m mooer.demo.run

# the web page and API on the demo model (after make demo); HOST=0.0.0.0 serves other machines
HOST ?= 127.0.0.1
PORT ?= 7860
serve: install
	@test -f demo_out/run/checkpoints/last.ckpt || { echo "no demo model: run make demo first"; exit 1; }
	$(VENV)/bin/mooer-serve --run_dir demo_out/run --device cpu --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/pack.py
	$(PY) benchmarks/dataloader.py
	$(PY) benchmarks/model.py --compile
	$(PY) benchmarks/flops.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/gpu.py --tiny --device cpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache logs outputs demo_out
