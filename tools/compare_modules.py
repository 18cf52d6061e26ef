"""Compare binary module structures by short proxy runs (keras-tuner drives the comparison).

Runs ``ubnas_tf.cli.compare_modules`` (also installed as the ``ubnas-compare-modules`` console script).
"""

from ubnas_commands import compare_modules

if __name__ == "__main__":
    compare_modules()
