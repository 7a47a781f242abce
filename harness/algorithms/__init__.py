"""RL algorithms (docs/methods.md §2): losses as pure functions plus one shared loop.

Each module registers into ALGORITHMS.
"""
