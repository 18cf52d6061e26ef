"""The benchmarks and studies: each module has ``run()``, the entry point of its console
script (``[project.scripts]`` in pyproject.toml); the files under benchmarks/ call the same
``run()``. Each prints its figures; see the README for the commands behind every figure."""
