"""Builds the Triton model repository: configs, ensembles, the Python-backend model, atomic writes.

``config`` makes ``ModelConfig`` messages, ``pipeline`` checks that steps fit together,
``python_model`` holds the embedded profile's ``model.py`` and ``writer`` publishes folders.
``validate`` checks any repository folder (``reader`` parses it, ``ensembles`` holds the
ensemble rules) and ``importer`` reads its models and ensembles back as signatures and
pipelines.
"""
