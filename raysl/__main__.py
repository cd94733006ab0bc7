import sys

from raysl.cli import main

sys.exit(main())
