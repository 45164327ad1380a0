"""The rewriting of one caption: the prompt, its seeds, and the checks of what comes back (validation,
faithfulness, CLIP token count)."""
