# Two entry points for a fresh machine: `make demo` (train detectors on the embedded default)
# and `make test` (the test suite, as CI runs it).
VENV     ?= .venv
PYTHON   ?= python3
VOC_ROOT ?= ../shared/voc2007/VOCdevkit/VOC2007
CLASSES  ?= car,dog
EPOCHS   ?= 2
SIZE     ?= 64
BIN      := $(VENV)/bin

.PHONY: install demo test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/vocfleet submit --classes $(CLASSES) --epochs $(EPOCHS) --image-size $(SIZE) --voc-root $(VOC_ROOT)
	$(BIN)/vocfleet run

test: install
	$(BIN)/pytest
