"""Pretrained backbones: offline-first weight resolution and timm feature extraction."""
