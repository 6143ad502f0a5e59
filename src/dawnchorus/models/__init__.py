"""Networks: the log-mel frontend, timm backbone + head classifiers, and the model file."""
