"""Entry point of ``python -m tests.cluster``; see :mod:`tests.cluster.cli`."""

import sys

from tests.cluster.cli import main

sys.exit(main())
