"""The auditor's side: the canonical form of events, digests, checkpoints, timelines and export."""
