"""The paper's search studies, measured: channel sampling ratio K, early stopping.

Runs ``ubnas_tf.experiments.studies`` (also installed as the ``ubnas-studies`` console script).
"""

from ubnas_commands import studies

if __name__ == "__main__":
    studies()
