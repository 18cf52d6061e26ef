"""Measures a latency table: the LCE batch-1 time of every part of an evaluation network.

Runs ``ubnas_tf.cli.latency_table`` (also installed as the ``ubnas-latency-table`` console
script).
"""

from ubnas_tf.cli.latency_table import run

if __name__ == "__main__":
    run()
