# Two entry points for people (README): `make run` and `make test`.
# Both create .venv on first use and install what they need into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install bench clean system-packages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[matrix,test]'
	touch $(STAMP)

install: $(STAMP)

# tshark validates plaintext CoAP frames and meshsim's pcaps in the tests;
# best effort: without it (no root, no apt) those tests skip, the rest run.
system-packages:
	@command -v tshark >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null; } || \
	  echo "note: tshark not installed; tests that need it will skip"; }

run: $(STAMP)
	$(BIN)/coap-gateway up $(RUN_ARGS)

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
