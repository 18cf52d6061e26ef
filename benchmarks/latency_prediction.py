"""How well a latency table predicts whole networks on LCE, and how much OPs miss.

Runs ``ubnas_tf.experiments.latency_prediction`` (also installed as the
``ubnas-bench-latency-prediction`` console script).
"""

from ubnas_commands import bench_latency_prediction

if __name__ == "__main__":
    bench_latency_prediction()
