# Two commands do everything on a fresh machine (each sets up .venv on first use):
#   make demo   -- the embedded service (SQLite + filesystem broker + local storage) and a demo merge end to end
#   make test   -- ruff + the whole test suite (PostgreSQL/Redis tests use the URLs below)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

export CALM_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
export CALM_TEST_REDIS_URL    ?= redis://127.0.0.1:6379/11

.PHONY: install demo serve test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/calm-service demo

serve: $(STAMP)
	$(BIN)/calm-service serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.merge_quality

clean:
	rm -rf var demo-out .pytest_cache
