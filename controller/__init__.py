"""The search side of nas-bohb: the BOHB engine, its executors and the Kubernetes operator.

No torch here: the controller image runs without it. The engine (:mod:`controller.engine`)
knows nothing of Kubernetes; the local executor and the operator plug into it alike.
"""

__version__ = "0.1.0"
