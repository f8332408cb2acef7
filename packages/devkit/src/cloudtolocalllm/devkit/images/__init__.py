"""Container images, one module per job: ``engine`` (a private dockerd), ``base`` (the offline base image),
``specs`` (what each image holds, its tags), ``build``, ``test`` and ``publish``; ``cli`` is ``ctllm-images``.
See docs/deploy/images.md."""
