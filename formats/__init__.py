"""Ratchet's wire formats, defined once: the OpenAI chat and completions shapes, the normalised
log that capture derives from them, and the files that cross process boundaries (the snapshot).

A leaf package: it imports nothing of Ratchet's, and every part (service, trainer, evals, deploy)
may import it (DESIGN.md, "Wire formats are defined once"; checked by import-linter). Nothing
parses OpenAI JSON by hand anywhere else.
"""
