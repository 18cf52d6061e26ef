"""Converts a saved Keras/Larq model to a .tflite with the Larq Compute Engine, and checks it.

Runs ``ubnas_tf.cli.convert`` (also installed as the ``ubnas-convert`` console script).
"""

from ubnas_commands import convert

if __name__ == "__main__":
    convert()
