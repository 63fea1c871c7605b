"""Moving accounts' homes between regions (fail-over), the regions' write leases, and reconciling after a split."""
