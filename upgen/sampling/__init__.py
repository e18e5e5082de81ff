"""Layer 9: pure samplers: MaskGIT decoding and schedules, autoregressive decoding and
beam search, Gaussian diffusion."""
