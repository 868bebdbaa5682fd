"""Diffusion models: the forward process, the samplers, the pixel and latent denoisers, their training, and masked diffusion for text."""
