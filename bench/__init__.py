"""fastsoftmax benchmark suite (pytest-benchmark) and report tool (``python -m bench.report``)."""
