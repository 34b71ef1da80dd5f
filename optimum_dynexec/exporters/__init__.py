"""Export helpers: draft weight compression (and, later, pair export)."""
