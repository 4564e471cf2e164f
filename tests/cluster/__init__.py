"""A real local Kubernetes for tests and for trying the operator on one machine.

:mod:`tests.cluster.build` builds and caches kube-apiserver, kube-controller-manager and
kube-scheduler from Debian's ``kubernetes`` source package; :mod:`tests.cluster.control`
starts them with etcd on 127.0.0.1; :mod:`tests.cluster.simnode` simulates nodes that run a
pod's command as a local process or only pretend to; :mod:`tests.cluster.fixtures` is the
pytest plugin. ``python -m tests.cluster build|up|down|env|status`` is the command line.
"""
