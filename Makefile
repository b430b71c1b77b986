# `make run` and `make test` work on a fresh machine: the first use creates .venv and installs distbench.
PY := .venv/bin/python

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: setup run test gpu-check
setup: .venv/installed

run: .venv/installed
	.venv/bin/torchrun --nproc_per_node=2 launch/run.py --head fixed

test: .venv/installed
	$(PY) -m pytest -q

# On a machine with a GPU (see benchmarks/gpu_check.py): the figures and records land in gpu-check/.
gpu-check: .venv/installed
	$(PY) benchmarks/gpu_check.py --out gpu-check
