"""kidrr.images: photos in. Decoding (torch-free), the preprocessing graph, the backbone table, and
`kidrr features` (folder of photos -> the published precomputed layout). docs/images.md."""
