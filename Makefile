# Set-up in two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The tested versions; torch==2.13.0 is the CPU build (an unpinned torch pulls a multi-GB CUDA build).
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test install clean fuzz mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[test,serve]'
	touch $@

install: $(VENV)/.installed

# Temperature 1 and a prompt: a model this young, sampled colder or from a bare newline, often
# loops on indentation into lines of spaces (docs/results.md, "The demo's samples").
demo: install
	rm -rf checkpoints/demo
	$(BIN)/charlm train --max-time 1.5 --out checkpoints/demo
	$(BIN)/charlm sample checkpoints/demo/best.ckpt --prompt 'def ' --num-samples 3 --length 300 --temperature 1.0 --seed 1

test: install
	$(BIN)/ruff check charlm tests benchmarks
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# A long random run of the CLI fuzzer (tests/cli/test_fuzz_cli.py); `make test` runs a short fixed one.
FUZZ_EXAMPLES ?= 2000
fuzz: install
	CHARLM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 \
		$(BIN)/python -m pytest -q -s tests/cli/test_fuzz_cli.py -k survives

# Mutation testing of the core (docs/mutation.md); slow, so not part of `make test` or CI.
# One module at a time, smallest first: MUTATE_MODULES="data.vocab generation.metrics" make mutate
# runs a subset.
MUTATE_MODULES ?= data.vocab generation.metrics generation.evaluation generation.checkpoint \
                  model.registry generation.sampling model.charrnn data.corpus model.cells \
                  model.recurrence
MUTATE_JOBS    ?= 2
mutate: install
	$(PIP_INSTALL) mutmut
	@set -e; for m in $(MUTATE_MODULES); do \
	    echo "== mutmut: charlm.$$m"; \
	    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 \
	        $(BIN)/mutmut run --max-children $(MUTATE_JOBS) "charlm.$$m.*" | tail -n 3; \
	done
	$(BIN)/python tests/mutation_counts.py

clean:
	rm -rf $(VENV) checkpoints/demo mutants
