"""Networks: denoising UNet, ReferenceNet, expression generator, intensity VAE, super-resolution, the stored
expression reference, and the networks metrics use (emotion classifier, SyncNet); `weights` reads third-party
weight files safely."""
