"""Prints the cost of a saved Keras/Larq model: binary/real params, size, BOPs, FLOPs, OPs.

Runs ``ubnas_tf.cli.summary`` (also installed as the ``ubnas-summary`` console script).
"""

from ubnas_commands import summary

if __name__ == "__main__":
    summary()
