"""The paper's search studies, measured: channel sampling ratio K, early stopping.

Runs ``ubnas_tf.benchmarks.studies`` (also installed as the ``ubnas-studies`` console script).
"""

from ubnas_tf.benchmarks.studies import run

if __name__ == "__main__":
    run()
