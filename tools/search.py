"""Search a binary architecture with UBNAS.

Runs ``ubnas_tf.cli.search`` (also installed as the ``ubnas-search`` console script).
"""

from ubnas_commands import search

if __name__ == "__main__":
    search()
