# The two quick-start commands: `make run` starts the server, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The official vendor clients the end-to-end tests drive (the openai SDK wants another
# websockets than the server's), in an environment of their own.
CLIENTS ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed

.PHONY: run test lint typecheck unit clients schema proto system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The whisper, bench and twilio extras too: their tests run with the rest.
	$(PY) -m pip install -q -e ".[dev,whisper,bench,twilio]"
	touch $(STAMP)

$(CLIENTS_STAMP): tests/clients/requirements.txt
	test -x $(CLIENTS)/bin/python || python3 -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install -q -r tests/clients/requirements.txt
	touch $(CLIENTS_STAMP)

clients: $(CLIENTS_STAMP)

run: $(STAMP)
	$(VENV)/bin/streamer serve --port 8080

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) $(CLIENTS_STAMP)
	$(PY) -m pytest -q

test: $(STAMP) system-deps lint typecheck unit

system-deps:
	sh scripts/system-deps.sh

schema: $(STAMP)
	$(PY) -m streamer.protocol.schema > docs/protocol.schema.json

proto: $(STAMP)
	PYTHON=$(PY) sh scripts/gen-proto.sh

clean:
	rm -rf $(VENV) $(CLIENTS) .pytest_cache .mypy_cache .ruff_cache
