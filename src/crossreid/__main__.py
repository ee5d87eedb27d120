import sys

from crossreid.cli import main

sys.exit(main())
