"""Layer 11 (above the leaves): the online input path: records, TFRecord, sources, the
grain pipeline, the readers families declare, and the data spec."""
