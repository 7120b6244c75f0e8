"""``python -m pyrovae`` is the ``pyrovae`` command (torchrun and other launchers need a module)."""

import sys

from .cli import main

sys.exit(main())
