"""Training sets: layout readers and validation, splits and samplers, clip and window data sets."""
