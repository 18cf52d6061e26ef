"""Batch-1 inference latency of binary networks on the LCE interpreter.

Runs ``ubnas_tf.experiments.inference_latency`` (also installed as the ``ubnas-bench-latency`` console script).
"""

from ubnas_commands import bench_latency

if __name__ == "__main__":
    bench_latency()
