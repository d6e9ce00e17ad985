"""Building blocks shared by plugins (blur, Gaussian models, ...): one concept per module."""
