# neo_rtdetr: one-command set-up and run. Python is $(PYTHON); the set-up installs into it.
PYTHON ?= python3
export PYTHON

.PHONY: setup demo test wheels

setup:
	bash install/setup.sh

DEMO_CONFIG := configs/rtdetr_tiny_synthetic_demo.py
DEMO_OUT := output/rtdetr_tiny_synthetic_demo

# The main job on the embedded synthetic dataset: train (resuming an interrupted or finished run),
# evaluate with COCOEvaluator (AP table), draw predictions on validation images.
demo: setup
	$(PYTHON) tools/lazyconfig_train_net.py --config-file $(DEMO_CONFIG) --resume
	$(PYTHON) tools/demo.py --config-file $(DEMO_CONFIG) --from-test-set 8 --confidence-threshold 0.35 \
		--output $(DEMO_OUT)/vis --opts train.init_checkpoint=$(DEMO_OUT)/model_final.pth
	$(PYTHON) tools/plot_metrics.py --metrics $(DEMO_OUT)/metrics.json --output $(DEMO_OUT)/plots
	@echo "neo_rtdetr demo: checkpoints, metrics.json and the AP table above are in $(DEMO_OUT); drawings in $(DEMO_OUT)/vis, plots in $(DEMO_OUT)/plots"

# CPU test suite (GPU-only checks are marked `gpu` and run on a GPU machine).
test: setup
	$(PYTHON) -m pytest -q -m "not gpu" tests

# Wheels for an offline GPU machine that has its own torch (see README).
wheels:
	bash install/build_offline_wheels.sh .whl
