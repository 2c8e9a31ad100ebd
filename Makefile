# The two commands a new user needs: `make run` and `make test`. Everything installs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint typecheck unit corpus functional integration browser bench fuzz clean broker-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Test data only: the official FHIR R4 examples (CC0), pinned in package.json / package-lock.json.
EXAMPLES := node_modules/hl7.fhir.r4.examples

$(EXAMPLES): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $(EXAMPLES)

# The browser tests drive Debian's Chromium with Playwright (no browser download: none is reachable).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium (Debian package chromium) for the browser tests"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends chromium

run: install
	$(BIN)/hub run

# The tests without a broker are CPU-bound and independent: one process per core for them (1 min 45 s
# alone, 51 s on two). The broker's tests mostly wait: two processes, each with its own broker, whole
# modules at a time (8-14 min against 16-21 one at a time, which the 20-minute budget could not hold);
# docs/RUNNING.md.
TEST_PROCESSES ?= 2

test: install lint typecheck $(EXAMPLES) $(CHROMIUM)
	$(BIN)/pytest -n $(TEST_PROCESSES) --durations=10 tests/unit tests/corpus tests/functional
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile --durations=25 tests/integration tests/browser

unit: install
	$(BIN)/pytest tests/unit

corpus: install $(EXAMPLES)
	$(BIN)/pytest tests/corpus

functional: install
	$(BIN)/pytest tests/functional

integration: install
	$(BIN)/pytest tests/integration

# Not part of `make test`: a measurement, minutes long (docs/PERFORMANCE.md).
bench: install
	$(BIN)/hub bench

# Not part of `make test`: the wide random search of ingest (HUB_FUZZ_EXAMPLES inputs, 20,000 by
# default, new ones each run); `make test` replays a fixed 300 (docs/INGEST.md, "Fuzzing").
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/unit/test_ingest_fuzz.py tests/unit/test_fast_validation.py tests/unit/test_instants.py -q -p no:cacheprovider
	cat test-output/fuzz-ingest.json

browser: install $(CHROMIUM)
	$(BIN)/pytest tests/browser

lint: install
	$(BIN)/ruff check hub tests bench
	$(BIN)/ruff format --check hub tests bench

typecheck: install
	$(BIN)/mypy

broker-stop: install
	$(BIN)/hub broker stop

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
