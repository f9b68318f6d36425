"""Camera raw files: reading the Bayer mosaic and writing developments or DNGs (`rawfile`), and
denoising them with a raw model (`denoise`)."""
