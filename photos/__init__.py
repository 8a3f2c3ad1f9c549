"""kidrr.photos: the commands for a person with a photo folder, `kidrr index` and `kidrr search`
(docs/images.md). Torch-free: they speak to the runtime and kidrr.gallery only."""
