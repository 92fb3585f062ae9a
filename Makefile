# The two commands (see README): `make demo` and `make test`. Both install what is missing
# first (scripts/setup is quiet when there is nothing to do), and need nothing exported.

CARGO ?= cargo

.PHONY: demo test lint setup bench

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

# visiond against transformers eager on this CPU (fixture checkpoints): out/bench.json and
# out/bench.png, and the table with the ratio. See scripts/bench.
bench: setup
	scripts/bench
