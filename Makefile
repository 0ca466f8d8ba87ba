# Standard targets. Each one creates .venv (if missing) and installs the package with its test, Beam, ANN and TFRS extras first;
# the install is redone only when setup.py or the version changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tfsidefuse-installed

.PHONY: setup demo test test-all lint format bench serve-check clean

$(STAMP): setup.py tfsidefuse/version.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,beam,ann,tfrs]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tfsidefuse run --config configs/demo/sasrec.yaml --config configs/demo/sasrec_f.yaml

# The second run: the layer, backbone and task checks (forward, symbolic call, fit steps, save/reload) under JAX.
JAX_TESTS := tests/layers tests/models -k "behaviors or rows_of_a_variable or mask_token_embedding_layer or fit or gradient_flows or padding_gets_no_gradient or all_positions_logits_and_loss"

# Two pytest processes (one per core of a small CI machine); `--dist loadfile` keeps each file's fixtures in one.
# The `processes` tests (workers and devices meeting in collectives) run afterwards in one process, with the cores
# to themselves: beside another test, one participant can miss a collective's timeout.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow and not gpu and not processes"
	$(BIN)/python -m pytest -m "processes and not slow and not gpu"
	KERAS_BACKEND=jax JAX_PLATFORMS=cpu $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(JAX_TESTS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

lint: $(STAMP)
	$(BIN)/ruff check tfsidefuse tests benchmarks
	$(BIN)/ruff format --check tfsidefuse tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format tfsidefuse tests benchmarks
	$(BIN)/ruff check --fix tfsidefuse tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_benchmark.py --config configs/amazon-beauty/sasrec.yaml

# Export tests: every signature through Python, TF1 Session, saved_model_cli and the C++ loader.
serve-check: $(STAMP)
	$(BIN)/python -m pytest tests/export

clean:
	rm -rf runs build *.egg-info .pytest_cache .ruff_cache
