"""Training and evaluation: the training loop (`train`), raw-domain training (`raw_train`), pairs of
real photos (`pairs`), image metrics (`metrics`) and the photo split of the shipped weights
(`photos`). Nothing that denoises (`denoise-batch`, the plug-ins' worker) imports this package."""
