"""The GAN half of FD-GAN: generator, pose discriminator, losses and the training model."""
