"""`python -m workers.cli ...` is `rxgate ...`."""

import sys

from workers.cli import main

sys.exit(main())
