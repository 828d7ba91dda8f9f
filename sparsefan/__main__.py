import sys

from sparsefan.cli import main

sys.exit(main())
