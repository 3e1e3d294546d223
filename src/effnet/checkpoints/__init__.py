"""Checkpoints: where they are (find), how they are written (write), what makes resume exact
(resume) and how a model is read back for eval, predict and export (read).

`find` imports no torch: the command line resolves `ckpt_path=` before any heavy import.
"""
