"""``python -m feedback_pipeline.cli``: the same as the ``feedback-pipeline`` command."""

import sys

from feedback_pipeline.cli import main

sys.exit(main())
