# Two set-up commands (README): `make run` and `make test`. Both build the virtual
# environment first (llama.cpp compiles from source: ~4 minutes, once).
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export HF_HUB_OFFLINE := 1

.PHONY: install run test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip wheel setuptools
	$(VENV)/bin/pip install -e ".[cpu,test,bench,train]"
	touch $(STAMP)

# The main job on the embedded default: Tansu broker + Gemma 3 270M on CPU, bundled prompts;
# two workers in one group, each with its own model on one thread (WORKERS=1 for one).
WORKERS ?= 2
run: $(STAMP)
	$(VENV)/bin/prefstream run --input examples/prompts.jsonl --out out/example --workers $(WORKERS)

test: $(STAMP)
	$(VENV)/bin/pytest

# Without the tests that drive the real CPU model.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not model"

# The quick benchmarks (each prints a JSON line last).
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/stages.py --quick
	$(VENV)/bin/python benchmarks/text.py --quick
	$(VENV)/bin/python benchmarks/bus.py --quick
	$(VENV)/bin/python benchmarks/model.py --quick
	$(VENV)/bin/python benchmarks/soak.py --quick
	$(VENV)/bin/python benchmarks/tap_parquet.py --quick

clean:
	rm -rf $(VENV) out .prefstream
