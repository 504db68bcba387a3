# jobpipe's two commands are `make run` and `make test`; CI runs `make ci`.
CARGO ?= cargo

.PHONY: run test ci lint bench chaos image broker tools build

## run: the pipeline on this machine, with a demo (Ctrl-C stops it)
run: broker
	tests/tools/install.sh python
	deploy/local/run.sh

## test: unit and integration tests against a real RabbitMQ (started if needed)
test: broker tools build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

## ci: lint, then test
ci: lint test

## bench: end-to-end throughput, latency and memory against the broker's own limit (release build)
bench: broker
	$(CARGO) build --release --workspace --bins
	target/release/jobpipe-bench $(BENCH_ARGS)

## chaos: broker and consumer faults under load, every job accounted for (one node, then a
## three-node cluster; release build; needs root and Debian's rabbitmq-server)
chaos: broker
	$(CARGO) build --release --workspace --bins
	target/release/jobpipe-chaos $(CHAOS_ARGS)
	target/release/jobpipe-chaos --cluster $(CHAOS_ARGS)

## image: the container image (docker, or buildah; see deploy/README.md)
image:
	deploy/docker/build.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## build: every binary (process-level tests run them)
build:
	$(CARGO) build --workspace --bins

broker:
	deploy/local/ensure-broker.sh

tools:
	tests/tools/install.sh
