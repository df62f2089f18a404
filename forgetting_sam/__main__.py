"""``python -m forgetting_sam ...`` is the ``forgetting-sam`` command (and what torchrun runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
