"""TAEHV's tiny decoder for Wan2.1 latents (``taew2_1``) as a second streaming decoder: its memory blocks' last input
frames are the explicit state between AR blocks (docs/vae.md §9)."""
