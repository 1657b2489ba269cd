"""Experiments that generate their own data and train: the phantom-pretrained body
(:mod:`.phantom_body`, the offline stand-in for ImageNet) and the shortcut benchmark
(:mod:`.shortcut`).
They sit above training and evaluation and below the commands."""
