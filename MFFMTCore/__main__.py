import sys

from MFFMTCore.cli import main

sys.exit(main())
