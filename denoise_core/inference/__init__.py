"""Running a model over an image: the `Denoiser` (`api`), its tiling (`tiler`), noise-level maps
(`levels`), device and precision choice (`device`) and checkpoint files (`checkpoint`)."""
