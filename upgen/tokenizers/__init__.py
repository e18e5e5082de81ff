"""Layer 6: text (BPE / Hugging Face) and image (VQGAN) tokenizers."""
