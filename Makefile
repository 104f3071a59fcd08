# neo_rtdetr: one-command set-up and run. Python is $(PYTHON); the set-up installs into it.
PYTHON ?= python3
export PYTHON

.PHONY: setup demo test wheels

setup:
	bash install/setup.sh

# The main job on the embedded synthetic dataset.
demo: setup
	$(PYTHON) tools/build_synthetic_dataset.py
	@echo "neo_rtdetr: the synthetic dataset is ready; training the demo model arrives with the RT-DETR model and trainer (issues #3, #4)."

# CPU test suite (GPU-only checks are marked `gpu` and run on a GPU machine).
test: setup
	$(PYTHON) -m pytest -q -m "not gpu" tests

# Wheels for an offline GPU machine that has its own torch (see README).
wheels:
	bash install/build_offline_wheels.sh .whl
