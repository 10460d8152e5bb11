import sys

from velocity.pipeline.cli import main

sys.exit(main())
