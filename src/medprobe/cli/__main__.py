import sys

from medprobe.cli import main

sys.exit(main())
