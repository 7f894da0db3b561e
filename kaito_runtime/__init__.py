"""kaito-runtime: turn a GPU node (or a CPU box) into a running vLLM endpoint."""

__version__ = "0.1.0"
