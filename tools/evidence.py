"""Fill and read the evidence ledger: does the search beat chance at equal OPs?

Runs ``ubnas_tf.evidence.cli`` (also installed as the ``ubnas-evidence`` console script).
"""

from ubnas_commands import evidence

if __name__ == "__main__":
    evidence()
