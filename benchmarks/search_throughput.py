"""Search-step throughput and peak memory of the UBNAS supernet.

Runs ``ubnas_tf.experiments.search_throughput`` (also installed as the ``ubnas-bench-throughput`` console script).
"""

from ubnas_commands import bench_throughput

if __name__ == "__main__":
    bench_throughput()
