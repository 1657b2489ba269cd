"""The lowest shared layer: the run folder (:mod:`.runs`), device choice (:mod:`.device`) and the
one training loop (:mod:`.engine`). Everything above imports these; they import only config/errors."""
