"""Benchmark: adding one layer to an existing demo store vs extracting that store in full.

The demo's own models, data and store settings (config/demo.yaml, built in a temporary directory
exactly as the workflow builds them). For each case, in one process with the model loaded:

- full:   `store.prepare` + every part of `extract_part` + `store.finalize` for the store with the
          new layer included, into an empty directory (what a first run of that config does);
- extend: the same three steps on a store that already holds every other layer (what the
          workflow runs after the layer is appended to the config).

Runs alternate (full, extend) `--repeats` times; medians are reported. Bytes written are the
process's `wchar` (/proc/self/io: every byte passed to write(), chunk files, metadata, markers).
Where the forward stopped: forward hooks on every block record the deepest one that ran.

    .venv/bin/python benchmarks/extend_store.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from layerprobe import config as lp_config  # noqa: E402
from layerprobe import fingerprint as lp_fp  # noqa: E402
from layerprobe.data.preprocess import open_data, preprocess  # noqa: E402
from layerprobe.data.synthetic import write_dataset  # noqa: E402
from layerprobe.features import store  # noqa: E402
from layerprobe.features.extract import build_store, make_layout  # noqa: E402
from layerprobe.models.backbones import load_backbone  # noqa: E402
from layerprobe.models.specs import model_spec, requested_keys  # noqa: E402
from layerprobe.models.tiny import openclip as tiny_clip  # noqa: E402
from layerprobe.models.tiny.llava import build_tiny_llava  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (model, prompt, layer to add): the demo's LLaVA leaves out vision_00; for the ViT, whose demo
# store holds every layer, the store starts without layer_02 (2 of its 4 blocks).
CASES = [("tiny_vit", "none", "layer_02"), ("tiny_llava", "describe", "vision_00")]


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


class DeepestBlock:
    """Forward hooks on every block of a backbone: the deepest one that ran, per label."""

    def __init__(self, backbone: Any) -> None:
        self.ran: list[str] = []
        if hasattr(backbone, "blocks"):  # open_clip ViT
            groups = {"ViT block": backbone.blocks}
        else:
            groups = {"vision block": backbone.vision_blocks, "LLM layer": backbone.decoder_blocks}
            backbone.projector.register_forward_hook(lambda *a: self.ran.append("projector"))
        for label, blocks in groups.items():
            for i, block in enumerate(blocks, 1):
                block.register_forward_hook(lambda *a, name=f"{label} {i}/{len(blocks)}": self.ran.append(name))

    def take(self) -> str:
        order = list(dict.fromkeys(self.ran))
        self.ran.clear()
        return order[-1] if order else "embeddings only (no block ran)"


def build(config: dict[str, Any], work: Path) -> None:
    ds = config["dataset"]
    write_dataset(ds["root"], **ds["synthetic"])
    for res in lp_config.resolutions(config):
        preprocess(ds["root"], work / f"{res}px.zarr", work / f"{res}px.json", res, {})
    for name, model in config["models"].items():
        tiny = model["tiny"]
        if model["kind"] == "open_clip":
            tiny_clip.build(model["arch"], model["pretrained"], tiny)
        else:
            build_tiny_llava(Path(model["hub_id"]), image_size=tiny["image_size"], patch_size=tiny["patch_size"],
                             vision_width=tiny["width"], vision_layers=tiny["layers"], text_width=tiny["text_width"],
                             text_layers=tiny["text_layers"], heads=tiny["heads"], seed=tiny["seed"],
                             mixing=tiny["mixing"])


def run_case(config: dict[str, Any], work: Path, name: str, prompt: str, new: str, repeats: int) -> list[str]:
    model = config["models"][name]
    keys = sorted(set(requested_keys(model)) | {new})
    old = [k for k in keys if k != new]
    spec = model_spec(name, model)
    data = open_data(work / f"{spec.image_size}px.zarr")
    layout = make_layout(name, model, prompt, data, config["store"]["chunk_images"], config["store"]["shuffle_seed"],
                         lp_fp.store(config, name, prompt))
    backbone = load_backbone(name, model, "cpu")
    deepest = DeepestBlock(backbone)
    parts, batch = config["store"]["parts"], model["batch_size"]
    base = work / f"{name}.{prompt}.base.zarr"
    build_store(backbone, data, base, work / "base.json", layout, old, batch, parts)
    deepest.take()
    stats: dict[str, list[tuple[float, int]]] = {"full": [], "extend": []}
    stops = {}
    for _ in range(repeats):
        for case in ("full", "extend"):
            target = work / f"{name}.{prompt}.{case}.zarr"
            shutil.rmtree(target, ignore_errors=True)
            if case == "extend":
                shutil.copytree(base, target)
            before, t0 = written_bytes(), time.perf_counter()
            build_store(backbone, data, target, work / f"{case}.json", layout, keys, batch, parts)
            stats[case].append((time.perf_counter() - t0, written_bytes() - before))
            stops[case] = deepest.take()
    full_s, full_b = C.median([s for s, _ in stats["full"]]), C.median([b for _, b in stats["full"]])
    ext_s, ext_b = C.median([s for s, _ in stats["extend"]]), C.median([b for _, b in stats["extend"]])
    size = store.disk_bytes(work / f"{name}.{prompt}.full.zarr")
    return [f"| {name}/{prompt} + {new} | {len(old)} -> {len(keys)} layers, {size / C.MB:.2f} MB | "
            f"{full_s:.3f} s, {full_b / C.MB:.2f} MB | {ext_s:.3f} s, {ext_b / C.MB:.3f} MB | "
            f"**{ext_s / full_s:.3f}** | **{ext_b / full_b:.3f}** | {stops['full']} | {stops['extend']} |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    C.quiet_logging()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
        raw["dataset"]["root"] = str(work / "ADEChallengeData2016")
        raw["models"]["tiny_vit"]["pretrained"] = str(work / "tiny_vit.pt")
        raw["models"]["tiny_llava"]["hub_id"] = str(work / "tiny_llava")
        config = lp_config.validate(raw)
        build(config, work)
        lines = [f"machine: {C.machine()}",
                 f"demo config: {raw['dataset']['synthetic']['training']} + {raw['dataset']['synthetic']['validation']}"
                 f" images, chunks of {config['store']['chunk_images']}, {config['store']['parts']} parts (run one "
                 f"after another here); {args.repeats} alternating rounds, medians; model loaded once, outside the "
                 "timings", "",
                 "| store + new layer | size | full extraction (wall, written) | extension (wall, written) | "
                 "wall ratio | bytes ratio | forward stopped at (full) | forward stopped at (extension) |",
                 "|---|---|---|---|---|---|---|---|"]
        for name, prompt, new in CASES:
            lines += run_case(config, work, name, prompt, new, args.repeats)
        lines.append(f"load average after: {C.load_average()}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
