"""Offline model preparation: format converters, local pipelines and random stand-ins.

- ``ct2_to_openai``: CTranslate2 Whisper -> openai-whisper checkpoint.
- ``campplus``: CAM++ speaker embedding as a pyannote ``Model``.
- ``diarization``: a pyannote SpeakerDiarization pipeline folder from local weights.
- ``random_standins``: tiny random wav2vec2-CTC and HTDemucs models, NLTK punkt_tab stub.
- ``prepare``: ``prepare_offline(dest)`` assembling all of the above into a models folder.
"""
