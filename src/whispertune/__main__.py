import sys

from whispertune.cli import main

sys.exit(main())
