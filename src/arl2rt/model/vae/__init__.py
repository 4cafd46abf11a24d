"""The Wan2.1 VAE decoder as a streaming step whose causal-conv caches are explicit, named state (docs/vae.md)."""
