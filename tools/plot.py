"""Plots a search or training run directory into RUN_DIR/plots/.

Runs ``ubnas_tf.cli.plot`` (also installed as the ``ubnas-plot`` console script).
"""

from ubnas_commands import plot

if __name__ == "__main__":
    plot()
