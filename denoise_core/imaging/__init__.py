"""Image files: reading and writing PNG, TIFF, JPEG and WebP with their metadata (`imageio`), atomic
writes that leave no partial file (`atomic`) and the checks every opened path goes through (`files`)."""
