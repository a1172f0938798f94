"""Segmentation: cut recordings into utterances with one of ten methods.

``run`` holds the stage's entry point (``run_segment``), ``runner`` the stages, their
per-recording cache and the methods assembled from it, ``backends`` the model calls,
``postprocess`` the thesis' rules, ``standard_outputs`` the RTTM and CTM files.
"""
