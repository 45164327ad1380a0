"""Meta sets, the source => target examples a prompt shows: load, check and write them (sets.py), import
them from LaCLIP's or COCO's files (importers.py), or generate them with an engine (generate.py)."""
from .sets import (GENERATE, IMPORT_COCO, IMPORT_LACLIP, MADE_BY, MetaSet, MetaSetError, check_target, chosen,
                   describe_problems, is_file_source, load, load_usable, parse, problems, sample_examples,
                   source_name, stats, string_problems, word_overlap, write)

__all__ = ["GENERATE", "IMPORT_COCO", "IMPORT_LACLIP", "MADE_BY", "MetaSet", "MetaSetError", "check_target", "chosen",
           "describe_problems", "is_file_source", "load", "load_usable", "parse", "problems", "sample_examples",
           "source_name", "stats", "string_problems", "word_overlap", "write"]
