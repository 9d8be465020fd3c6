# Two entry points for a fresh machine: `make demo` (train detectors on the embedded default)
# and `make test` (lint, the wheel check and the test suite, as CI runs it).
VENV     ?= .venv
PYTHON   ?= python3
VOC_ROOT ?= ../shared/voc2007/VOCdevkit/VOC2007
CLASSES  ?= car,dog
EPOCHS   ?=
START_EPOCHS ?=
AUGMENT  ?=
SIZE     ?=
BIN      := $(VENV)/bin

.PHONY: install install-run demo test test-fast lint format wheel-check

# Where torch comes from: PyPI's build carries CUDA (about 5 GB installed). Where no GPU is wanted,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU build of the same pinned
# release first (the pins, torch==2.14.1 and torchvision==0.29.1, accept its +cpu versions).
TORCH_INDEX ?=

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ]; then $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 --index-url "$(TORCH_INDEX)"; fi

# What running needs (make demo): the package and its dependencies, no test tools.
$(BIN)/.installed-run: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

# What the tests need besides (make test): the test extra (a browser driver, an S3 server, ONNX, ruff, the web app).
$(BIN)/.installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install-run: $(BIN)/.installed-run
install: $(BIN)/.installed

REPORT   ?= vocfleet-report.html
FORCE    ?=

# Uses VOC_ROOT if it holds VOC images, else downloads VOC2007 (needs internet) into the data dir.
# submit's defaults for two classes: a shared start (80 epochs on all 20 labels, strong augmentation), then 1 epoch a class;
# START_EPOCHS=, EPOCHS= and AUGMENT= (submit's --augment-policy: auto, origin, strong, erase) override them.
# SIZE= the pictures' side: by default 224 px where torch sees a CUDA GPU of 8 GiB or more, else 64 px
# (vocfleet.model.engine.demo_image_size).
demo: install-run
	@$(BIN)/vocfleet report --fleet --out "$(REPORT)" $(if $(FORCE),--force) --dry-run > /dev/null || \
	  { echo "make demo: REPORT=PATH names another file, FORCE=1 replaces it (checked before any training)" >&2; exit 1; }; \
	size="$(SIZE)"; \
	if [ -z "$$size" ]; then \
	  size=$$($(BIN)/python -c 'from vocfleet.model.engine import demo_image_size; print(demo_image_size())') || exit 1; \
	  echo "make demo: $$size px (a CUDA GPU of 8 GiB or more: 224, else 64; SIZE=N chooses)"; \
	fi; \
	root="$(VOC_ROOT)"; \
	if [ ! -d "$$root/JPEGImages" ]; then \
	  echo "no VOC images at $$root: downloading VOC2007"; \
	  $(BIN)/vocfleet data download --year 2007 > .demo-download.log || exit 1; cat .demo-download.log; \
	  root=$$(sed -n 's/^VOC2007 ready at \(.*\); next.*/\1/p' .demo-download.log); rm -f .demo-download.log; \
	fi; \
	$(BIN)/vocfleet submit --classes $(CLASSES) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(START_EPOCHS),--start-epochs $(START_EPOCHS)) $(if $(AUGMENT),--augment-policy $(AUGMENT)) --image-size "$$size" --voc-root "$$root" && \
	$(BIN)/vocfleet run && \
	$(BIN)/vocfleet report --fleet --out "$(REPORT)" $(if $(FORCE),--force) && \
	echo "Shared start by default (--start none trains each class alone): over image-level folds of the sample it beats independent fits at the same fleet compute on each of the six classes measured (bench/RESULTS.md); --init imagenet or 224 px on a GPU reach far more."

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The wheel holds one top-level package, `vocfleet`, and works on its own (migrations included).
wheel-check: install
	$(BIN)/python .ci/check_wheel.py

# Three test processes: much of the suite waits on servers, workers and subprocesses; each process
# has its own PostgreSQL database (test_gw0, ...) and its own private Redis servers, and one math
# thread (tests/conftest.py).
test: lint wheel-check
	$(BIN)/pytest -n 3

# The edit loop: no end-to-end training on the VOC sample, no PostgreSQL/Redis/Celery processes.
test-fast: install
	$(BIN)/pytest -m "not slow and not services"
