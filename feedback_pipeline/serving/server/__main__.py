"""``python -m feedback_pipeline.serving.server``: the server without the ``feedback-pipeline``
CLI (its options are ``serve``'s, plus ``--data-dir``)."""

from feedback_pipeline.serving.server.app import main

raise SystemExit(main())
