# Pulse: `make run` starts the whole stack, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Pulse needs Python 3.11 or newer (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/pulse dev

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check pulse_core pulse_api pulse_worker pulse_cli tests bench
	$(BIN)/ruff format --check pulse_core pulse_api pulse_worker pulse_cli tests bench
	$(BIN)/mypy
	@# luacheck reads every Lua script as Redis runs it, includes resolved (.pulse/lua/ROOM.NAME.lua).
	@if command -v luacheck >/dev/null 2>&1; then \
		rm -rf .pulse/lua && $(BIN)/python -m pulse_core.lua_scripts .pulse/lua >/dev/null && \
		luacheck --quiet --codes --config .luacheckrc .pulse/lua; \
	else \
		echo "luacheck is not installed (Debian: apt-get install lua-check): Lua scripts not linted"; \
	fi

clean:
	rm -rf $(VENV) .pulse .pytest_cache .mypy_cache .ruff_cache *.egg-info
