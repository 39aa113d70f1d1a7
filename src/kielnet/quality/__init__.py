"""Quality flags and out-of-distribution checks."""
