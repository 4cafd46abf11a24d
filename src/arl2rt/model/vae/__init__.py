"""VAE decoders as streaming steps whose state between blocks is explicit, named tensors (docs/vae.md): the Wan2.1
VAE decoder (its causal-conv caches) and, in ``taehv/``, TAEHV's tiny one (its memory blocks' last frames)."""
