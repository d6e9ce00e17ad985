"""EfficientAD for adcore; the package imports nothing (the detector loads on first use)."""
