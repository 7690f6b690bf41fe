"""`python -m stages.gate`: the metric gate (stages/gate/compare.py)."""

import sys

from stages.gate.compare import main

sys.exit(main())
