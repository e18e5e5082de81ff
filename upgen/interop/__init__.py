"""Layer 4: other frameworks' models in and out: `upgen import hf`, `upgen export hf`,
`upgen align`."""
