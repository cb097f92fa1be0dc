# Entry points. Every target that runs code first makes sure the venv is current.
PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
DEVICE     ?= cpu
CONFIG     ?= configs/synthetic/teacher.yaml
# The suite's worker processes (pytest-xdist), each with its share of the cores
# (tests/conftest.py); TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

.PHONY: setup test demo screenshots teacher-cache clean-work

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) cli.py demo --device $(DEVICE)

screenshots: $(STAMP)
	$(PY) docs/screenshots.py

teacher-cache: $(STAMP)
	$(PY) cli.py build-cache --config $(CONFIG) --train-missing

clean-work:
	rm -rf work
