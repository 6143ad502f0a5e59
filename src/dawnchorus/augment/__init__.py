"""Augmentation: waveform transforms, the background-noise bank, batch mixup and SpecAugment."""
