"""The launcher: consumes the launch streams and creates (or, on revoke, deletes) task pods.

``launcher`` runs the loop, ``consumer`` reads and acknowledges stream entries,
``podspec`` builds a task's pod as plain API JSON (pure, no kubernetes import).
"""
