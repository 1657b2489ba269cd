"""Experiments that generate their own data, train and evaluate: the shortcut benchmark
(:mod:`.shortcut`). They sit above training and evaluation and below the commands."""
