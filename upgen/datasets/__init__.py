"""Layer 5: offline data set builders: the shapes set, folders, docstrings, a folder's
profile, and `upgen tokenize` (records from any source)."""
