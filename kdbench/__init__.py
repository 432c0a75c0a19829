"""kdbench: a benchmark for knowledge distillation between heterogeneous architectures."""

__version__ = "0.1.0"
