"""pixel-zscore: per-pixel Gaussian statistics of aligned normal images (an example plugin)."""
