"""The composition root: one region's parts, built from its settings (`composition.root.Root`)."""
