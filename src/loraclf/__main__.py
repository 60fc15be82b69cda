"""`python -m loraclf ...` (also what `accelerate launch -m loraclf` and `torchrun -m loraclf` run)."""

import sys

from .cli import main

sys.exit(main())
