"""adcore's conformance kit (adcore-sdk) on the cfa detector."""

from adcore_sdk.conformance import DetectorConformance


class TestCfaConformance(DetectorConformance):
    detector = "cfa"
    params = {"image_size": 64, "epochs": 2}  # noqa: RUF012 (read-only configuration)
