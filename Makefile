# `make demo` and `make test` are the whole set-up on a fresh machine: each bootstraps
# .venv on first use (the stamp makes the second call instant), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m finetune.study --gin_file=gin_configs/studies/demo.gin --workdir=runs/demo
	@echo "demo report: runs/demo/report/report.md (results: runs/demo/report/results.csv)"

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
