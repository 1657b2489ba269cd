"""Experiments built on the toolkit: the phantom-pretrained body (``pretrain``) and, later, the
shortcut benchmark. They orchestrate training and may import every layer below them."""
