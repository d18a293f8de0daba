import sys

from emodiff.cli import main

sys.exit(main())
