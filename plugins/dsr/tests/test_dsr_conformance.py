"""adcore's conformance kit (adcore-sdk) on the dsr detector (packaged latent model, tiny modules)."""

from adcore_sdk.conformance import DetectorConformance


class TestDsrConformance(DetectorConformance):
    detector = "dsr"
    draws_at_random = True  # module initialisation, quantised-space and image-space anomalies
    epochs = 10
    params = {  # noqa: RUF012 (read-only configuration)
        "image_size": 64,
        "anomaly_width": 4,
        "restriction_width": 8,
        "upsampling_width": 4,
    }
