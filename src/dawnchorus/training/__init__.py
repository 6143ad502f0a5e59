"""Training with Lightning: data module, LightningModule and the ``train()`` entry point.

Named ``training`` so that ``dawnchorus.train()`` stays a function (see ``dawnchorus.inference``).
"""
