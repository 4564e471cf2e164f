"""The training side of nas-bohb: one configuration, one budget of seconds, one record.

This package is what runs on the GPUs. It imports nothing from :mod:`controller`, and its
top level imports no torch, so that the search side can read :mod:`trainer.params` (the
list of parameters the trainer understands) without installing PyTorch.
"""

__version__ = "0.1.0"
