"""Synthetic data sets in the BirdCLEF layout, for tests and the demo."""
