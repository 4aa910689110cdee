"""AI jobs beside the data: Celery + Redis workers running risk (LightGBM) and imaging
(MONAI/torch) models, writing results back as DiagnosticReport (+ Observations, DICOM SEG,
an OpenEMR document). Needs the ``ai`` extra.

Not built yet: see the project's open issues.
"""
