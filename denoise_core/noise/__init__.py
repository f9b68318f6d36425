"""Noise synthesis for training, evaluation and benchmarks: camera noise profiles and the Bayer mosaic
(`camera`), the camera-pipeline simulator (`pipeline`) and the noise specs and training mixes
(`synth`)."""
