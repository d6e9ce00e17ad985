"""AI-VAD for adcore (see model.py); importing the package imports nothing."""
