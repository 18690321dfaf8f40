"""Rule build_tiny_model: a random tiny model saved where the config's path points (demo/tests)."""
import json
from pathlib import Path

from layerprobe import config as lp_config
from layerprobe.models import weights
from layerprobe.models.tiny import openclip as tiny_clip
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    model = lp_config.validate(snakemake.config)["models"][snakemake.wildcards.model]
    tiny = model["tiny"]
    if model["kind"] == "open_clip":
        path = tiny_clip.build(model["arch"], model["pretrained"], tiny)
    elif tiny.get("preset"):
        from layerprobe.models.tiny.llava import build_preset_llava

        path = build_preset_llava(Path(model["hub_id"]), tiny["preset"], text_layers=tiny["text_layers"],
                                  seed=tiny["seed"])
    else:
        from layerprobe.models.tiny.llava import build_tiny_llava

        path = build_tiny_llava(Path(model["hub_id"]), image_size=tiny["image_size"], patch_size=tiny["patch_size"],
                                vision_width=tiny["width"], vision_layers=tiny["layers"],
                                text_width=tiny["text_width"], text_layers=tiny["text_layers"], heads=tiny["heads"],
                                seed=tiny["seed"], mixing=tiny["mixing"])
    # The digest of what was built: a tiny model changed by hand afterwards is refused at DAG build.
    Path(snakemake.output[0]).write_text(json.dumps({"path": str(path), **tiny, "digest": weights.tiny_digest(model),
                                                     "fingerprint": snakemake.params.fingerprint}, indent=2))
