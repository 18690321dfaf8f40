"""layerprobe: layer-wise linear segmentation probes of frozen vision and vision-language models."""

__version__ = "0.1.0"
