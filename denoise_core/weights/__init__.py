"""The shipped weight files (`*.safetensors`) and their cards (`*.md`), read by `shipped_models`."""
