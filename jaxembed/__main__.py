import sys

from jaxembed.cli import main

sys.exit(main())
