"""adcore's conformance kit, video variant (adcore-sdk), on the ai-vad detector (offline default)."""

from adcore_sdk.conformance import VideoDetectorConformance


class TestAiVadConformance(VideoDetectorConformance):
    detector = "ai-vad"
    clip_length = 2
    draws_at_random = True  # the background reservoir, the GMM's k-means++ and the bank compression
    params = {  # noqa: RUF012 (read-only configuration)
        "image_size": 64,
        "background_frames": 16,
        "min_region_area": 16,
        "foreground_kernel_size": 3,
        "max_bank_per_video": 8,
    }

    def test_fitted_state_round_trip(self, conformance_registry, conformance_splits, fitted, tmp_path):
        """save_checkpoint's tensors, loaded into a fresh detector of the same config, score identically."""
        import safetensors.torch
        import torch
        from adcore import Engine, save_checkpoint

        detector, _, _ = fitted
        path = save_checkpoint(detector, tmp_path / "model.safetensors")
        fresh = self.build(conformance_registry, seed=1)
        fresh.load_fitted_state(safetensors.torch.load_file(str(path)))
        clips = torch.rand(3, 2, 3, *detector.input_spec.image_size, generator=torch.Generator().manual_seed(0))
        test = self.dataset(detector, conformance_splits.test)
        engine = Engine(device="cpu", batch_size=4, progress=False, log=lambda m: None)
        torch.testing.assert_close(
            engine.predict(fresh, test).scores, engine.predict(detector, test).scores, rtol=0, atol=0
        )
        torch.testing.assert_close(fresh.predict(clips).pred_score, detector.predict(clips).pred_score, rtol=0, atol=0)
