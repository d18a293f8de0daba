"""Networks: denoising UNet, ReferenceNet, expression generator, intensity VAE, super-resolution."""
