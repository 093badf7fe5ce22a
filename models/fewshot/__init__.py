"""Few-shot talking heads (Zakharov et al. 2019, DESIGN §4.4): landmark rasteriser, embedder, generator, projection
discriminator, and their shared config."""
