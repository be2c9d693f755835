# make serve: set up if needed, then run the service on its embedded default.
# make test:  set up if needed, then run the whole test suite (tests/unit and tests/service).
# make test-fast: tests/unit only (no Ray, no vLLM engine, no server): about a minute.
# make test-sampling: the sampling distribution test with more samples (docs/speculation.md).
# make setup: idempotent; a virtualenv in .venv with the CPU extra and the default model.
# make bench: set up if needed, then run `tandem bench` into bench-results/ (BENCH_ARGS adds
#             options, e.g. BENCH_ARGS=--quick).
# make soak:  set up if needed, then the long reliability run (RELIABILITY.md): a 30-minute soak
#             and thousands of fuzzed requests; figures into soak-results/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
comma := ,
EXTRAS ?= cpu,dev
STAMP := $(VENV)/.tandem-setup-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOAK_MINUTES ?= 30
FUZZ_EXAMPLES ?= 1500

.PHONY: setup serve test test-fast test-sampling bench soak lint protos

setup: $(STAMP)
	$(BIN)/tandem models prepare

$(STAMP): pyproject.toml deploy/install.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	deploy/install.sh $(BIN)/python $(EXTRAS) --editable
	touch $@

serve: setup
	$(BIN)/tandem serve

# pytest exits 5 when it collects nothing: say so and fail, an empty suite proves nothing.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

# The sampling distribution test of tests/service/test_sampling.py with 5x the samples of `make test`
# (about 5x its time); PYTEST_ARGS="--sampler vllm" runs it on vLLM's own rejection sampler.
test-sampling: setup
	$(BIN)/python -m pytest tests/service/test_sampling.py -k distribution --sampling-samples 2000 $(PYTEST_ARGS)

bench: setup
	$(BIN)/tandem bench --out bench-results $(BENCH_ARGS)

soak: setup
	$(BIN)/python -m pytest tests/service/test_reliability.py tests/service/test_serve_app.py -k "soak or fuzz" \
		--soak-minutes $(SOAK_MINUTES) --fuzz-examples $(FUZZ_EXAMPLES) \
		--soak-report soak-results/soak.json -s

# ruff, then the import-linter layer contracts and the no-cycles check (tests/unit/test_layers.py).
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests/unit/test_layers.py

protos: setup
	$(BIN)/python -m tandem.protos.build
