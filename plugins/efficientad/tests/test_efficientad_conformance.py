"""adcore's conformance kit (adcore-sdk) on the efficientad detector (packaged PDN-S teacher)."""

from adcore_sdk.conformance import DetectorConformance


class TestEfficientAdConformance(DetectorConformance):
    detector = "efficientad"
    draws_at_random = True  # student and autoencoder initialisation, augmentation, dropout
    # 64 px is the smallest size the PDN and the autoencoder's 1x1 code support (8x8 maps).
    params = {"image_size": 64, "steps": 20}  # noqa: RUF012 (read-only configuration)
