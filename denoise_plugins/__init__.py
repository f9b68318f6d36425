"""Host plugin files shipped as package data; `denoise-plugin install HOST` copies them out."""
