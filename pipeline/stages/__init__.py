"""Stages: each a module with ``spec`` (its artifact's identity, computed without running it) and ``run``;
``stage=NAME`` picks one and the executors (:mod:`pipeline.execution`) run them."""
