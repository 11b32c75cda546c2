# The two commands of the README: `make demo` and `make test`. Each builds .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install clean gpu-wheels mutation

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision pinned together: open_clip needs a torchvision that imports beside torch.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# the optional runtimes are installed too, so CI runs their tests
	$(BIN)/pip install -q -e '.[dev,ray,openvino,serve]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/toolkit demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# the wheels the lent GPU machine lacks, for its Python 3.12 (benchmarks/gpu_wheels.py; README "GPU")
gpu-wheels: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_wheels .whl

# mutation testing of the critical modules (pyproject [tool.mutmut]; about 70 minutes on 2 cores); not in `make test`
mutation: $(STAMP)
	$(BIN)/pip install -q mutmut==3.8.1
	rm -rf mutants
	start=$$(date +%s); \
	TOOLKIT_TEST_FIXTURE_CACHE=$(CURDIR)/mutants/.fixtures $(BIN)/mutmut run --max-children 2 || true; \
	$(BIN)/python -m benchmarks.mutation_report --seconds $$(( $$(date +%s) - start ))

clean:
	rm -rf $(VENV) demo_out
