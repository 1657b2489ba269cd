"""Names vulture (``make lint``, settings in pyproject.toml) reports that are used, by reason.

Not imported by anything: vulture only reads the names. Add a line here only for a use vulture
cannot see; remove dead code instead.
"""

# ruff: noqa
_ = object()

# pydicom: data elements are set as attributes of a Dataset and read by whoever opens the file
_.BitsAllocated, _.BitsStored, _.BurnedInAnnotation, _.DerivationDescription, _.ErrorComment
_.HighBit, _.ImageComments, _.InstanceNumber, _.Modality, _.PatientBirthDate, _.PatientID
_.PatientName, _.PatientSex, _.PixelRepresentation, _.ReferringPhysicianName, _.SeriesNumber
_.StudyDate, _.StudyID, _.StudyTime, _.VR, _.ViewPosition

# settings written on library objects (onnxruntime SessionOptions, PIL ImageDraw, torch.backends,
# pynetdicom AE, Starlette's request parser), read by the library
_.log_severity_level, _.graph_optimization_level, _.intra_op_num_threads, _.inter_op_num_threads
_.fontmode, _.benchmark, _.require_called_aet, _.spool_max_size

# dataclass / pydantic fields: serialised (JSON responses, asdict, templates), not read by name
accession_number, frame_of_reference_uid, series_instance_uid, sop_class_uid, sop_instance_uid
study_instance_uid, check_films, energy_score, id, text_cols
sr_sop_instance_uid, sc_sop_instance_uid, seg_sop_instance_uid, not_written, overlay_png_base64
elapsed_ms, disclaimer, dicom_source, dicom_written, _.dicom_source, _.dicom_written

# public API kept for library users (documented on the docs site)
_.body_frozen

# unpacked and unused on purpose in a test (the parity test compares probabilities/features)
z_e, z_o
