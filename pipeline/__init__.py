"""Learned parallel decoding of masked-diffusion language models: engine, tasks and pipeline stages."""
