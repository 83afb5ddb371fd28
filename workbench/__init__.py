"""Compression Workbench: compress a neural network and measure, honestly, what it costs and buys.

Importing the package is cheap and has no side effects: torch and onnxruntime load only when a
function that needs them is called. Public entry points:

    from workbench.specs import RunSpec, load_recipe
    from workbench.pipeline import run_pipeline
"""

__version__ = "0.1.0"
