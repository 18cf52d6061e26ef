"""Retrain a searched genotype with plain Keras `model.fit` (two-stage BNN recipe).

Runs ``ubnas_tf.cli.train`` (also installed as the ``ubnas-train`` console script).
"""

from ubnas_commands import train

if __name__ == "__main__":
    train()
