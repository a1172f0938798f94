"""Old import paths kept for models folders prepared before ``corpus_tools.models`` existed.

``corpus models prepare-offline`` writes checkpoints and a pipeline ``config.yaml`` that name
the Python class to build (pyannote and Lightning import it by its dotted path). Folders
prepared by earlier versions name ``corpus_tools.modelzoo.campplus`` and
``corpus_tools.modelzoo.diarization``; these two modules let those folders keep loading.
New code imports from ``corpus_tools.models``.
"""
