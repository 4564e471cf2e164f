"""The local executor: a search's trials as trainer subprocesses on this machine.

:class:`~controller.local.executor.LocalExecutor` drives the engine;
:class:`~controller.local.runner.SubprocessRunner` starts, watches and re-attaches
trainers; :mod:`~controller.local.devices` pins each slot to a GPU or a share of the CPU.
"""
