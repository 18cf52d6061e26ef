"""Batch-1 inference latency of binary networks on the LCE interpreter.

Runs ``ubnas_tf.experiments.inference_latency`` (also installed as the ``ubnas-bench-latency`` console script).
"""

from ubnas_tf.experiments.inference_latency import run

if __name__ == "__main__":
    run()
