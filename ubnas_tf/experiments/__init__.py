"""The experiments: benchmarks, the paper's studies and the search against chance. Each module
has ``run()``, the entry point of its console script (``[project.scripts]`` in
pyproject.toml); the files under benchmarks/ call the same ``run()``. Each prints its figures;
docs/ gives the commands behind every figure. Retrainings go to the evidence ledger through
`ubnas_tf.evidence.runner`."""
