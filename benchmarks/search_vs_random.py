"""Does the searched genotype beat chance? Searched vs random vs hand-designed cells at equal OPs.

Runs ``ubnas_tf.experiments.search_vs_random`` (also installed as the ``ubnas-bench-search-vs-random`` console script).
"""

from ubnas_commands import bench_search_vs_random

if __name__ == "__main__":
    bench_search_vs_random()
