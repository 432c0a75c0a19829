"""kdbench's runtime assets (presets, pair sets, model names, published numbers), installed as the package
data `kdbench.benchmarks` (pyproject.toml); beside them in the repository: results/ and the GPU check."""
