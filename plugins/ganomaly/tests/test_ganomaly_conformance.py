"""adcore's conformance kit (adcore-sdk) on the ganomaly detector."""

from adcore_sdk.conformance import DetectorConformance


class TestGanomalyConformance(DetectorConformance):
    detector = "ganomaly"
    draws_at_random = True  # DCGAN initialisation (and discriminator re-draws) follow the run's seed
    params = {"image_size": 32, "n_features": 16, "latent_vec_size": 16, "epochs": 30}  # noqa: RUF012
