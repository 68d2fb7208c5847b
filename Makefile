# The two quick-start commands: `make run` starts the server, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit schema proto system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The whisper, bench and ray extras too: their tests run with the rest.
	$(PY) -m pip install -q -e ".[dev,whisper,bench,ray]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamer serve --port 8080

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q

test: $(STAMP) system-deps lint typecheck unit

system-deps:
	sh scripts/system-deps.sh

schema: $(STAMP)
	$(PY) -m streamer.protocol.schema > docs/protocol.schema.json

proto: $(STAMP)
	PYTHON=$(PY) sh scripts/gen-proto.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
