import sys

from vqtok.cli import main

sys.exit(main())
