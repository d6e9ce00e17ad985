"""adcore's conformance kit (adcore-sdk) on the draem detector, with tiny networks."""

from adcore_sdk.conformance import DetectorConformance


class TestDraemConformance(DetectorConformance):
    detector = "draem"
    draws_at_random = True  # initialisation and every synthetic anomaly follow the run's seed
    # The smallest image the U-Net takes (32 px: five halvings) and tiny widths, so the kit runs
    # in seconds per fit; a higher learning rate and 600 steps so the white squares separate
    # (measured: image AUROC 1.0, about 38 CPU seconds per fit on one thread).
    params = {  # noqa: RUF012 (read-only configuration)
        "image_size": 32,
        "base_width": 4,
        "disc_base_width": 8,
        "epochs": 150,
        "learning_rate": 2e-3,
    }
