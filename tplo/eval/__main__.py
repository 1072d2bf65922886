"""`python -m tplo.eval MODEL --out DIR`: evaluate one model (see `tplo.eval.evaluate`)."""

import sys

from tplo.eval.evaluate import main

sys.exit(main())
