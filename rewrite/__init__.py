"""rewrite: offline caption rewriting for CLIP training data.

The library behind the `rewrite` command: plan shards (`inputs.plan.plan`), rewrite them
(`run.runner.run`), check progress (`workdir.status.collect`) and export (`exports.export.export`).
ARCHITECTURE.md maps every module.
"""
import os as _os

__version__ = "0.1.0"

# pyarrow's allocator (mimalloc 3) asks the kernel for transparent huge pages on its arenas, and each
# 2 MiB page is then zeroed whole when first touched, and again after mimalloc returns idle memory (a
# second later): a shard's join of 8,192 rows took 50-75 ms of CPU with them and 13-16 ms without, on a
# 2-core KVM guest, at the end of every task. mimalloc reads the setting once, as pyarrow loads, so it
# is made here, before any module of ours imports pyarrow; a user's own setting wins.
_os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")
