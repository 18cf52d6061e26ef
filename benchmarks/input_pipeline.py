"""Streamed input pipeline alone: images/s and peak memory at two dataset sizes.

Runs ``ubnas_tf.experiments.input_pipeline`` (also installed as the ``ubnas-bench-input`` console script).
"""

from ubnas_commands import bench_input

if __name__ == "__main__":
    bench_input()
