"""The command-line programs: each module defines its absl flags on import and has ``run()``,
the entry point of its console script (``[project.scripts]`` in pyproject.toml); the files
under tools/ call the same ``run()``. Import one program per process: absl flags are global."""
