"""Benchmarks of optimum-dynexec against optimum-intel, OpenVINO GenAI and transformers (``python -m benchmarks.run``)."""
