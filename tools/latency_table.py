"""Measures a latency table: the LCE batch-1 time of every part of an evaluation network.

Runs ``ubnas_tf.cli.latency_table`` (also installed as the ``ubnas-latency-table`` console
script).
"""

from ubnas_commands import latency_table

if __name__ == "__main__":
    latency_table()
