# The two quick-start commands: `make run` starts the server, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What serving needs (the package and the whisper extra): `make run` installs no more.
SERVE_STAMP := $(VENV)/.installed-serve
# The official vendor clients the end-to-end tests drive (see below).
CLIENTS := .venv-clients
CLIENT_STAMPS := $(CLIENTS)/deepgram/.installed $(CLIENTS)/pipecat/.installed \
	$(CLIENTS)/livekit/.installed $(CLIENTS)/openai/.installed \
	$(CLIENTS)/assemblyai/.installed \
	tests/e2e/js/node_modules/.installed

.PHONY: run test lint typecheck unit schema proto system-deps clean clients

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The whisper, bench, twilio, ray and redis extras too: their tests run with the rest.
	$(PY) -m pip install -q -e ".[dev,whisper,bench,twilio,ray,redis]"
	touch $(STAMP) $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[whisper]"
	touch $(SERVE_STAMP)

# Serves the real recognizer, so the page at / transcribes the microphone; `streamer
# serve` alone keeps its default, the test model.
run: $(SERVE_STAMP)
	$(VENV)/bin/streamer serve --port 8080 --model whisper

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	# The layers and no import cycles ([tool.importlinter] in pyproject.toml).
	PYTHONPATH=src $(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) $(CLIENT_STAMPS)
	$(PY) -m pytest -q

test: $(STAMP) system-deps lint typecheck unit

system-deps:
	sh scripts/system-deps.sh

schema: $(STAMP)
	$(PY) -m streamer.protocol.schema > docs/protocol.schema.json

proto: $(STAMP)
	PYTHON=$(PY) sh scripts/gen-proto.sh

clean:
	rm -rf $(VENV) $(CLIENTS) tests/e2e/js/node_modules .pytest_cache .mypy_cache .ruff_cache

# The vendor clients the tests drive (Deepgram's and AssemblyAI's SDKs, Pipecat, LiveKit,
# openai, twilio), each in an environment of its own: their pins clash with the project's
# and with each other's (protobuf, numpy, websockets).

$(CLIENTS)/%/.installed: tests/e2e/clients/requirements-%.txt
	test -x $(CLIENTS)/$*/bin/python || python3 -m venv $(CLIENTS)/$*
	$(CLIENTS)/$*/bin/python -m pip install -q -r $<
	touch $@

tests/e2e/js/node_modules/.installed: tests/e2e/js/package.json tests/e2e/js/package-lock.json
	cd tests/e2e/js && npm ci --no-audit --no-fund
	touch $@

clients: $(CLIENT_STAMPS)
