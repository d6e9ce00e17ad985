"""FrozenFeatureCache: each image's frozen features are computed once, and stay correct."""

import torch
from adcore.components.feature_cache import FrozenFeatureCache


class CountingExtractor:
    def __init__(self):
        self.images_seen = 0

    def __call__(self, images):
        self.images_seen += images.shape[0]
        return [images * 2, images.mean(dim=1, keepdim=True)]


def test_features_are_computed_once_per_image_and_match():
    extractor = CountingExtractor()
    cache = FrozenFeatureCache(extractor)
    images = torch.randn(4, 3, 5, 5)
    keys = ["a", "b", "c", "d"]
    first = cache(images, keys)
    order = [2, 0, 3, 1]  # a later epoch, shuffled
    again = cache(images[order], [keys[i] for i in order])
    assert extractor.images_seen == 4
    for level_first, level_again, level_true in zip(first, again, extractor(images[order])):
        assert torch.equal(level_again, level_true)
    assert torch.equal(first[0], images * 2)


def test_mixed_batches_compute_only_the_new_images():
    extractor = CountingExtractor()
    cache = FrozenFeatureCache(extractor)
    images = torch.randn(3, 3, 4, 4)
    cache(images[:2], ["a", "b"])
    features = cache(images, ["a", "b", "c"])
    assert extractor.images_seen == 3
    assert torch.equal(features[0], images * 2)


def test_over_budget_it_stops_caching_but_stays_correct():
    extractor = CountingExtractor()
    per_image = (3 * 4 * 4 + 4 * 4) * 4  # bytes of both levels for one float32 image
    cache = FrozenFeatureCache(extractor, max_bytes=2 * per_image)
    images = torch.randn(4, 3, 4, 4)
    features = cache(images, ["a", "b", "c", "d"])
    assert torch.equal(features[0], images * 2)
    seen = extractor.images_seen
    features = cache(images[:2], ["a", "b"])  # cached: no new work
    assert extractor.images_seen == seen
    features = cache(images[2:], ["c", "d"])  # not cached: computed again, correctly
    assert extractor.images_seen == seen + 2
    assert torch.equal(features[0], images[2:] * 2)
