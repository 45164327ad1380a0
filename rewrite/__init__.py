"""rewrite: offline caption rewriting for CLIP training data.

The library behind the `rewrite` command: plan shards (`plan.plan`), rewrite them (`runner.run`),
check progress (`status.collect`) and export (`export.export`).
"""
__version__ = "0.1.0"
