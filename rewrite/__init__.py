"""rewrite: offline caption rewriting for CLIP training data.

The library behind the `rewrite` command: plan shards (`inputs.plan.plan`), rewrite them
(`run.runner.run`), check progress (`workdir.status.collect`) and export (`exports.export.export`).
ARCHITECTURE.md maps every module.
"""
__version__ = "0.1.0"
