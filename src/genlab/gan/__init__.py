"""The GAN: generator, projection discriminator, and the min-max training step."""
