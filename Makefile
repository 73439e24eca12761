# `make demo` and `make test` are the whole set-up on a fresh machine: each bootstraps
# .venv on first use (the stamp makes the second call instant), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-slow install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,test,tpu]'
	$(PY) -m model.kernels.build
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m study --gin_file=gin_configs/studies/demo.gin --workdir=runs/demo
	@echo "demo report: runs/demo/report/report.md (results: runs/demo/report/results.csv)"

# `make test`: everything but the tests marked slow (about 10 minutes on 2 cores), in two
# workers: most tests are bound by XLA's compiles, which use one core (a test file stays on one
# worker, so its module fixtures are built once). `make test-slow`: those (end-to-end jobs,
# SIGKILL resume, corpus rebuild); CI runs both.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n 2 tests

clean:
	rm -rf $(VENV) runs
