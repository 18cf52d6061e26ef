"""Shared test set-up: TensorFlow runs as the tools run it."""

import os

# As `ubnas_tf/__init__.py` sets it for the tools; here before any test module imports
# TensorFlow, so in-process and subprocess runs use the same kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
