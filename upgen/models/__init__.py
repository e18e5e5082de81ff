"""Layer 8: one module per model family (exporting FAMILY, found by name), their shared
layers, and the networks and weight readers they use."""
