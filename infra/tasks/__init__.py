"""The invoke command-line layer: one module per namespace, each thin (DESIGN: Architecture)."""
