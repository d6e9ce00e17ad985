"""adcore's conformance kit (adcore-sdk) on the rkde detector (offline grid regions)."""

from adcore_sdk.conformance import DetectorConformance


class TestRkdeConformance(DetectorConformance):
    detector = "rkde"
    # 128 px (the kit's images): boxes of 32, 48 and 64 px, all above the default min_box_size 25.
    # The kit's 16 images give ~1300 regions, fewer than max_training_points: the fit draws
    # nothing at random here (test_rkde_model checks that the seed picks the subset beyond it).
    params = {"image_size": 128, "n_pca_components": 8}  # noqa: RUF012 (read-only configuration)
