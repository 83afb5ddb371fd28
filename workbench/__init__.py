"""Compression Workbench: compress a neural network and measure, honestly, what it costs and buys.

Importing the package is cheap: torch and onnxruntime load only when a function that needs them is
called. Its one side effect: ONNX Runtime's usage telemetry is switched off for this process and its
children (`ORT_DISABLE_TELEMETRY=1` unless set otherwise), before onnxruntime can be imported through
the package: nothing is sent off the machine. Public entry points:

    from workbench.specs import RunSpec, load_recipe
    from workbench.pipeline import run_pipeline
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
