"""What the service tells its operators: metrics (CloudWatch EMF, and totals for `ledger status`)."""
