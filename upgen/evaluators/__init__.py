"""Layer 4: evaluators, one module each, found by name (registry.py): run by the trainer
from config.evals and by `upgen eval NAME`."""
