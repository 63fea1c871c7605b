"""The local runtime: embedded DynamoDB, table bootstrap, stream poller and the `ledger` command."""
