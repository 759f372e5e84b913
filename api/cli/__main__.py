"""``python -m api.cli``: the ``cami`` command."""

import sys

from api.cli.main import main

sys.exit(main())
