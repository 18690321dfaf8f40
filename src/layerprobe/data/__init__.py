"""Stage 1, the data: ADE20K read as mmseg reads it (`ade20k`), a synthetic stand-in in its exact
layout (`synthetic`), the official archive fetched and verified (`download`), the files' content
digest (`digest`), and the preprocessed uint8 data stores, centre-cropped or padded to each
model's resolution (`preprocess`, `geometry`)."""
