"""Prints the cost of a saved Keras/Larq model: binary/real params, size, BOPs, FLOPs, OPs.

Runs ``ubnas_tf.cli.summary`` (also installed as the ``ubnas-summary`` console script).
"""

from ubnas_tf.cli.summary import run

if __name__ == "__main__":
    run()
