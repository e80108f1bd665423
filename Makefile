# Two commands for users: `make book` and `make test`. Everything else is a step they are made of.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip here warns about local index folders that do not hold a package: noise, not a problem
QUIET_PIP := 2>&1 | grep -v 'is ignored: it is neither a file nor a directory'; exit $${PIPESTATUS[0]}
PROFILE ?= default
PY := .venv/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMPS := .stamps
# Debian packages: speech synthesis (flite, espeak-ng, sox), audio I/O, the real LibriVox clips,
# WordNet text, and Chromium for checking the rendered book. npm (for the book's offline MathJax) comes
# from Debian only where no npm is installed already (a Node.js from elsewhere conflicts with Debian's npm).
APT_PACKAGES := flite espeak-ng sox libsox-fmt-all libsndfile1 pocketsphinx-testdata wordnet-base chromium

.PHONY: book test setup system venv models data notebooks html verify bench clean-book help
help:
	@echo "make book [PROFILE=default|smoke|paper]  set up, build models/corpus, run every chapter, render the book"
	@echo "make test                                 set up, run the test suite (smoke chapters included)"
	@echo "steps: setup system venv models data notebooks html verify bench"

book: setup models data notebooks html verify
	@echo "book: artifacts/book/$(PROFILE)/_build/html/index.html"

test: setup
	$(PY) -m pytest tests

setup: system venv

system: $(STAMPS)/system
$(STAMPS)/system: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done; \
	  command -v npm >/dev/null || echo nodejs npm); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STAMPS) && touch $@

venv: .venv/.stamp
.venv/.stamp: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.lock $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	@touch $@

models: setup
	$(PY) -m speechllm_redundancy models fetch --profile profiles/$(PROFILE).yaml

data: setup
	$(PY) -m speechllm_redundancy corpus build --profile profiles/$(PROFILE).yaml

notebooks: setup
	$(PY) -m speechllm_redundancy book run --profile profiles/$(PROFILE).yaml

html: setup
	$(PY) -m speechllm_redundancy book render --profile profiles/$(PROFILE).yaml

verify: setup
	$(PY) -m speechllm_redundancy book verify --profile profiles/$(PROFILE).yaml

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean-book:
	rm -rf artifacts/book/$(PROFILE) artifacts/executed/$(PROFILE)
