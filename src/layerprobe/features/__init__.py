"""Stage 2, the features: chunked Zarr stores, one per (model, prompt) (`store`, `markers` for
per-chunk progress), written by extraction (`extract`) with raw chunk files (`chunkfiles`), and
read back by the probe's shuffled loader (`loader`, with `epoch_order`, `buffers`, `resident`,
`staging` and `inflight`)."""
