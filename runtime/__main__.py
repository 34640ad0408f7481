"""``python -m runtime``: the same as the ``persona-runtime`` command."""

import sys

from runtime.server.cli import main

sys.exit(main())
