"""bf16 autocast (AMX on x86 CPUs) speeds up backbones without corrupting density statistics."""

import torch
from adcore.components.gaussian import PositionalGaussian
from adcore.data import AnomalyDataset, load_data
from adcore.engine import Engine
from adcore.metrics import image_auroc
from adcore.plugins import get_registry


def test_gaussian_stays_float32_under_autocast():
    features = torch.randn(32, 8, 5)
    reference = PositionalGaussian()
    reference.fit(features)
    under_autocast = PositionalGaussian()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast.fit(features)
        scores = under_autocast.score(features)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(under_autocast.whitening, reference.whitening)
    torch.testing.assert_close(scores, reference.score(features))


def test_padim_bf16_inference_ranks_images_like_fp32(shared_mvtec):
    detector = get_registry().detector_class("padim")(image_size=(64, 64))
    splits = load_data(f"mvtec:{shared_mvtec}")
    train = AnomalyDataset(splits.train, detector.input_spec)
    test = AnomalyDataset(splits.test, detector.input_spec, has_masks=True)
    Engine(progress=False).fit(detector, train)
    fp32 = Engine(progress=False).predict(detector, test)
    bf16 = Engine(progress=False, precision="bf16").predict(detector, test)
    assert bf16.maps.dtype == torch.float32
    assert not torch.equal(fp32.scores, bf16.scores)  # the backbone really ran in bf16
    # Scores within a few percent, and the anomalies still rank above the normal images.
    torch.testing.assert_close(bf16.scores, fp32.scores, rtol=0.05, atol=0.0)
    assert image_auroc(bf16.scores, bf16.labels) == image_auroc(fp32.scores, fp32.labels) == 1.0
