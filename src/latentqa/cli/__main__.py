import sys

from latentqa.cli import main

sys.exit(main())
