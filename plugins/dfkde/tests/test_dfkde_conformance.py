"""adcore's conformance kit (adcore-sdk) on the dfkde detector."""

from adcore_sdk.conformance import DetectorConformance


class TestDfkdeConformance(DetectorConformance):
    detector = "dfkde"
    params = {"image_size": 64}  # noqa: RUF012 (read-only configuration)
