"""Retraining-step throughput, trace time and peak memory of an evaluation network.

Runs ``ubnas_tf.experiments.train_throughput`` (also installed as the ``ubnas-bench-train`` console script).
"""

from ubnas_commands import bench_train

if __name__ == "__main__":
    bench_train()
