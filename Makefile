# The two commands (see README): `make demo` and `make test`. Both install what is missing
# first (scripts/setup is quiet when there is nothing to do), and need nothing exported.

CARGO ?= cargo

.PHONY: demo test lint setup install dist soak bench

# Soak length in minutes (`make soak SOAK_MINUTES=5` for a quick one).
SOAK_MINUTES ?= 90

setup:
	@scripts/setup

demo: setup
	$(CARGO) build --release --quiet
	scripts/demo target/release/visiond

test: setup
	$(CARGO) test --all-targets --no-fail-fast
	$(CARGO) test --doc

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings

soak: setup
	$(CARGO) build --release --quiet
	scripts/soak --minutes $(SOAK_MINUTES) target/release/visiond

# Installs the binary with the libraries it needs beyond the distribution's (libtorch, and its
# CUDA libraries in a CUDA build) in $(PREFIX)/lib/visiond, the systemd unit, an example
# /etc/visiond (an operator's edits are kept), man pages and shell completions. PREFIX (default
# /usr/local) and DESTDIR are respected; BIN installs an already built binary instead of
# building the release one; BUNDLE=link hard-links the libraries instead of copying them.
PREFIX ?= /usr/local
BIN ?=
install:
	@if [ -z "$(BIN)" ]; then scripts/setup && $(CARGO) build --release --quiet; fi
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" BUNDLE="$(BUNDLE)" scripts/install "$(if $(BIN),$(BIN),target/release/visiond)"

# A tarball of the same self-contained install for a box without a toolchain, in dist/:
# VARIANT=cuda (default; libtorch's CUDA libraries, ~3.3 GB installed) or VARIANT=cpu (a build
# that links no CUDA library: libtorch_cpu and c10 only). BIN packs an already built binary.
VARIANT ?= cuda
dist: setup
	scripts/dist "$(VARIANT)" $(BIN)

# visiond against transformers eager on this CPU (fixture checkpoints): out/bench.json and
# out/bench.png, and the table with the ratio. See scripts/bench.
bench: setup
	scripts/bench
