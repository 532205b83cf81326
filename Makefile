# The README's two commands: `make demo` runs a local peercloud, `make test` runs every check.
# Both create .venv/ on first use and install the project with its test dependencies into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@# The power-loss tests mount crashfs (tests/powerloss): FUSE 3 from apt, and a compiler for pyfuse3.
	@# The NAT lab (tests/natlab.py) builds namespaces with iproute2 and NAT routers with nftables,
	@# captures what a relay sees with tcpdump, and maps ports with miniupnpd (whose STUN check
	@# asks stund, from stun-server).
	{ pkg-config --exists fuse3 && command -v fusermount3 && command -v gcc && command -v ip \
		&& command -v nft && command -v tcpdump && command -v miniupnpd && command -v stund; } >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev \
			pkg-config gcc libc6-dev iproute2 nftables tcpdump miniupnpd-nftables stun-server; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/peercloud demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -c 'import libtorrent' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/cli_start.py
	$(BIN)/python bench/add_get.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/repair.py
	$(BIN)/python bench/delete.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/buckets.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/connect.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
