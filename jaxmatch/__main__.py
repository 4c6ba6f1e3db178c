"""``python -m jaxmatch``: the ``jaxmatch`` command line (`jaxmatch.cli`)."""

import sys

from .cli import main

sys.exit(main())
