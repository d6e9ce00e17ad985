"""DSR's discrete latent model as an adcore resource provider; the package imports nothing.

The provider lives in ``adcore_weights_dsr_latent.provider``; the entry point
(``adcore_weights_dsr_latent.plugin``) imports no torch.
"""
