import sys

from cloudtolocalllm.devkit.images.cli import main

sys.exit(main())
