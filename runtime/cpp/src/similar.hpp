// Query by example on stored vectors: the items whose globals are nearest (dot product) to one
// stored item's global, the item itself left out. An exact scan; the Python reference is
// Retriever.search_like_id (runtime/retriever.py) on a gallery without an ANN index.
#pragma once
#include <vector>

#include "bundle.hpp"
#include "image_source.hpp"

namespace kidrr {

// The best min(k, live - 1) live rows other than `row` by their global's dot product with row's
// global, best first, ties by the smaller row. Error(KIDRR_ERR_INPUT) on k outside 1..live or a
// non-finite stored global.
std::vector<Hit> nearest_to_row(const ImageSource& gallery, size_t row, size_t k);

}  // namespace kidrr
