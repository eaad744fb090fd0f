# The two commands a newcomer needs are `make demo` and `make test`; the rest are for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# `make demo` needs only the dev extra (no framework adapters, no test tools).
DEMO_STAMP := $(VENV)/.demo-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS := dev,test,aws,gcp,mcp,integrations
PYTEST_ARGS ?=

.PHONY: venv interop-deps test lint format crds demo dev bench kind-e2e clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The distribution was called "agentauth" before it became "agentauth-k8s"; drop the old one.
	@$(BIN)/python -m pip uninstall --quiet --yes agentauth 2>/dev/null || true
	@rm -rf operator/agentauth.egg-info
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

# The independent JavaScript implementations tests/interop drives (jose, two RFC 9421 libraries),
# pinned by its package-lock.json. npm ci reinstalls only when the lock file changes; with
# --prefer-offline a warm npm cache needs no network.
INTEROP := tests/interop
INTEROP_STAMP := $(INTEROP)/node_modules/.package-lock.json
$(INTEROP_STAMP): $(INTEROP)/package.json $(INTEROP)/package-lock.json
	cd $(INTEROP) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	@touch $(INTEROP_STAMP)

interop-deps: $(INTEROP_STAMP)

lint: venv
	$(BIN)/ruff check operator tests bench demo hack
	$(BIN)/ruff format --check operator tests bench demo hack
	$(BIN)/mypy
	$(BIN)/mypy --strict demo
	$(BIN)/lint-imports
	$(BIN)/agentauth crds --check

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: lint interop-deps
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$status

format: venv
	$(BIN)/ruff check --fix operator tests bench demo hack
	$(BIN)/ruff format operator tests bench demo hack

crds: venv
	$(BIN)/agentauth crds

$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make demo: installing agentauth-k8s[dev] into $(VENV) (first run only; see README.md"
	@echo "           'Set-up' for what it downloads). pip's progress follows."
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@rm -f $(VENV)/.demo-*
	@touch $(DEMO_STAMP)

# The whole story in under a minute on an embedded control plane (demo/run.py): agentauth dev,
# the samples, an agent exchanging, asking, being refused, asking a person (alice approves with
# kubectl agentauth) and acting for a user. Stops everything it started.
demo: $(DEMO_STAMP)
	$(BIN)/python demo/run.py

# agentauth dev, left running in the foreground (Ctrl-C stops it): it prints the
# `export KUBECONFIG=...` line to use in another shell. State is kept in $(DEV_DIR).
DEV_DIR ?= .dev
dev: $(DEMO_STAMP)
	$(BIN)/agentauth dev --dir $(DEV_DIR)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info operator/*.egg-info
	rm -rf $(INTEROP)/node_modules

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py

kind-e2e: venv
	bash hack/kind-e2e.sh
