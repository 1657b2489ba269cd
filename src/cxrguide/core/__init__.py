"""The lowest shared layer: the run folder (:mod:`.runs`), device choice (:mod:`.device`), the
one training loop (:mod:`.engine`) and the one ONNX Runtime session set-up
(:mod:`.onnx_session`). Everything above imports these; they import only config/errors."""
