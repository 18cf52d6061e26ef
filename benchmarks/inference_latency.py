"""Batch-1 inference latency of binary networks on the LCE interpreter.

Runs ``ubnas_tf.benchmarks.inference_latency`` (also installed as the ``ubnas-bench-latency`` console script).
"""

from ubnas_tf.benchmarks.inference_latency import run

if __name__ == "__main__":
    run()
