"""Streamed input pipeline alone: images/s and peak memory at two dataset sizes.

Runs ``ubnas_tf.experiments.input_pipeline`` (also installed as the ``ubnas-bench-input`` console script).
"""

from ubnas_tf.experiments.input_pipeline import run

if __name__ == "__main__":
    run()
