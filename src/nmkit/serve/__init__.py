"""nmkit.serve: a headless DICOM AI server (``nmkit serve --config server.yaml``).

Modules: ``config`` (YAML), ``node`` (pynetdicom C-ECHO/C-STORE SCP, AE whitelist, TLS, durable storage),
``routing`` (called AE + attribute rules -> interpretation instances), ``db`` (SQLite WAL job queue with
leases, back-off, parking and sent records), ``registry`` (model versions, gated promotion, shadow,
rollback), ``worker`` (segmentation + outputs, local or on Dask), ``outputs`` (SEG, TID 1500 SR,
secondary-capture overlay), ``sender`` (C-STORE with retries), ``status`` (HTTP /health, /status),
``logs`` (JSON logs without patient identifiers), ``server`` (ties them together), ``demo``
(phantom studies and tiny models for tests and the benchmark).
"""
