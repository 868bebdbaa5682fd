"""`genlab compare`: every family measured on the same data and machine, and the report."""
