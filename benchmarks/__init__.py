"""Benchmark definitions: presets (YAML), pair sets, published numbers, speed benchmarks."""
