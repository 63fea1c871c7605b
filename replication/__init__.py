"""Replication between regions as DynamoDB Global Tables does it: write stamps, a replicator, a durable queue."""
