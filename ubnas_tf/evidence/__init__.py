"""Evidence that the search beats chance: a ledger of retrainings, its statistics and report."""
