import sys

from cxrguide.cli import main

sys.exit(main())
