"""Writes zoo/registry.json, the model zoo as data: one row per model, keyed by name.

    python scripts/make_registry.py                     # regenerate (run from the repo root)
    python scripts/make_registry.py publish DIR --tag T # add our exported model DIR as release assets

Where the rows come from:
- Magenta's class names: the table in magenta/magenta-js `sketch/README.md` ("Here is a list of
  all the models provided", 114 names), copied into `MAGENTA_CLASSES` below. Each name gives four
  rows: `magenta/<class>.gen`, `magenta/<class>.vae` (H = 512) and `magenta-large/<class>.gen`,
  `magenta-large/<class>.vae` (H = 1024). That every .vae file exists upstream is not verified.
- SHA-256, size and info of the 40 H = 512 gen files that ../shared/data/magenta-gen holds
  byte-exact; every other Magenta file gets `sha256: null` (pinned on first download instead).
- QuickDraw's class names: the file names of ../shared/data/quickdraw/simplified-25 (344) plus
  `zigzag`, the one class that sample lacks.
- Our own models (`origin: sketchkit`) are kept from the current registry.json as they are: the
  shipped `sheep`, and whatever `publish` added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from sketchkit.magenta import read_magenta
from sketchkit.modelinfo import ModelInfo

HERE = Path(__file__).resolve().parent
ZOO = HERE.parent / "zoo"
REGISTRY = ZOO / "registry.json"
SHARED = HERE.parent.parent / "shared" / "data"

MAGENTA_URL = "https://storage.googleapis.com/quickdraw-models/sketchRNN"
MAGENTA_SETS = {  # name prefix -> (bucket folder, LSTM size H)
    "magenta": ("models", 512),
    "magenta-large": ("large_models", 1024),
}
MAGENTA_LICENSE = "Apache-2.0 (Magenta sketch-rnn pretrained models, Google; not stated per file)"
MAGENTA_CLASSES_SOURCE = (
    "magenta/magenta-js sketch/README.md, 'list of all the models provided' "
    "(commit 24065d8588cb9ee38da6dbca5d9b64b75e97bc75)"
)
# fmt: off
MAGENTA_CLASSES = [
    "alarm_clock", "ambulance", "angel", "ant", "antyoga", "backpack", "barn", "basket", "bear",
    "bee", "beeflower", "bicycle", "bird", "book", "brain", "bridge", "bulldozer", "bus",
    "butterfly", "cactus", "calendar", "castle", "cat", "catbus", "catpig", "chair", "couch",
    "crab", "crabchair", "crabrabbitfacepig", "cruise_ship", "diving_board", "dog", "dogbunny",
    "dolphin", "duck", "elephant", "elephantpig", "eye", "face", "fan", "fire_hydrant",
    "firetruck", "flamingo", "flower", "floweryoga", "frog", "frogsofa", "garden", "hand",
    "hedgeberry", "hedgehog", "helicopter", "kangaroo", "key", "lantern", "lighthouse", "lion",
    "lionsheep", "lobster", "map", "mermaid", "monapassport", "monkey", "mosquito", "octopus",
    "owl", "paintbrush", "palm_tree", "parrot", "passport", "peas", "penguin", "pig", "pigsheep",
    "pineapple", "pool", "postcard", "power_outlet", "rabbit", "rabbitturtle", "radio",
    "radioface", "rain", "rhinoceros", "rifle", "roller_coaster", "sandwich", "scorpion",
    "sea_turtle", "sheep", "skull", "snail", "snowflake", "speedboat", "spider", "squirrel",
    "steak", "stove", "strawberry", "swan", "swing_set", "the_mona_lisa", "tiger", "toothbrush",
    "toothpaste", "tractor", "trombone", "truck", "whale", "windmill", "yoga", "yogabicycle",
    "everything",
]
# fmt: on

QUICKDRAW_URL = "https://storage.googleapis.com/quickdraw_dataset/sketchrnn/{class}.npz"
# Our release assets: one flat namespace per tag, so each file is published as <model>.<file>.
RELEASE_URL = "https://github.com/sketchkit/sketchkit/releases/download/{tag}/{asset}"
# A row carries the model's `dims` (sketchkit.dims.ModelDims, as in model.json and the checkpoint;
# only the fields known before download), and what a client needs to preprocess: N_max, the scale.
PREPROCESSING = ("max_seq_len", "scale_factor")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def magenta_rows(local: Path, quickdraw: list[str]) -> dict[str, dict[str, Any]]:
    single = {c.lower().replace(" ", "_") for c in quickdraw}
    rows = {}
    for prefix, (folder, hidden) in MAGENTA_SETS.items():
        for cls in MAGENTA_CLASSES:
            for mode in ("gen", "vae"):
                base = f"{cls}.{mode}.json"
                # the large set repeats the base names: on a mirror and in the cache it lives
                # under large_models/
                file: dict[str, Any] = {
                    "url": f"{MAGENTA_URL}/{folder}/{base}",
                    "name": base if prefix == "magenta" else f"{folder}/{base}",
                    "sha256": None,
                    "size": None,
                }
                row: dict[str, Any] = {
                    "dims": {"kind": "vae" if mode == "vae" else "decoder-only", "cell": "lstm", "dec_size": hidden},
                    "max_seq_len": None,
                    "scale_factor": None,
                    "format": "magenta-json",
                    "origin": "magenta",
                    "license": MAGENTA_LICENSE,
                    "dataset": f"Quick, Draw! {cls!r} (CC BY 4.0)"
                    if cls in single
                    else f"Quick, Draw! classes mixed as {cls!r} (which ones: not stated; CC BY 4.0)",
                    "metrics": {},
                    "notes": "sha256 unknown upstream: pinned on first download",
                    "files": [file],
                }
                copy = local / base
                if prefix == "magenta" and copy.is_file():
                    info, shapes, _ = json.loads(copy.read_text())
                    file.update(sha256=sha256(copy), size=copy.stat().st_size)
                    row.update(
                        dims=read_magenta(copy).dims.to_dict(),
                        max_seq_len=info["max_seq_len"],
                        scale_factor=info["scale_factor"],
                        notes="sha256 of the byte-exact copy in shared/data/magenta-gen",
                    )
                    row["metrics"] = {k: info[k] for k in ("r_loss", "kl_loss") if k in info}
                rows[f"{prefix}/{cls}.{mode}"] = row
    return rows


def quickdraw_classes(local: Path) -> list[str]:
    names = {p.stem for p in local.glob("*.ndjson")} | {"zigzag"}
    return sorted(names, key=str.lower)


def write(registry: dict[str, Any]) -> None:
    """One model per line: the table diffs row by row."""
    models = registry["models"]
    lines = ["{", f' "about": {json.dumps(registry["about"])},', ' "models": {']
    lines += [f"  {json.dumps(k)}: {json.dumps(models[k])}," for k in models]
    lines[-1] = lines[-1].rstrip(",")
    lines += [" },", f' "datasets": {json.dumps(registry["datasets"], indent=1)}', "}"]
    tmp = REGISTRY.with_suffix(".json.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    json.loads(tmp.read_text())  # never write a file the client cannot read
    tmp.replace(REGISTRY)


def shipped_rows(ours: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows for the model directories under zoo/models/, sizes read from their model.json."""
    rows = dict(ours)
    for d in sorted(p for p in (ZOO / "models").iterdir() if p.is_dir()):
        row = rows.get(d.name) or {
            "dims": {},
            "max_seq_len": None,
            "scale_factor": None,
            "format": "sketchkit-onnx",
            "origin": "sketchkit",
            "license": "",
            "dataset": "",
            "metrics": {},
            "notes": "shipped with the package",
            "files": [],
        }
        for legacy in ("kind", "cell", "enc_size", "dec_size", "z_size", "num_mixture"):  # flat before dims
            row.pop(legacy, None)
        row["shipped"] = f"models/{d.name}"
        if (d / "model.json").is_file():
            info = ModelInfo.load(d)  # any model.json version
            row.update(dims=info.dims.to_dict(), **{k: getattr(info, k) for k in PREPROCESSING})
            row.update(license=info.license, metrics=info.metrics)
            row["size"] = sum((d / f).stat().st_size for f in info.files.values())
            row = {k: row.pop(k) for k in ("dims", *PREPROCESSING)} | row  # dims first, as in the other rows
        rows[d.name] = row
    return rows


def regenerate() -> None:
    old = json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {"models": {}}
    ours = shipped_rows({k: v for k, v in old["models"].items() if v.get("origin") == "sketchkit"})
    classes = quickdraw_classes(SHARED / "quickdraw" / "simplified-25")
    magenta = magenta_rows(SHARED / "magenta-gen", classes)
    registry = {
        "about": {
            "names": "<class> = ours; magenta/<class>.<gen|vae> = Magenta H=512; "
            "magenta-large/<class>.<gen|vae> = Magenta H=1024",
            "magenta_classes": MAGENTA_CLASSES_SOURCE,
            "magenta_sha256": "pinned for the 40 H=512 gen files in shared/data/magenta-gen; "
            "null elsewhere (trust on first use)",
            "release_url": RELEASE_URL,
            "generated_by": "scripts/make_registry.py",
        },
        "models": {**ours, **magenta},
        "datasets": {
            "quickdraw": {
                "url": QUICKDRAW_URL,
                "license": "CC BY 4.0 (Google, Quick, Draw!)",
                "format": "sketch-rnn npz (train/valid/test stroke-3, 70000/2500/2500)",
                "classes_source": "file names of shared/data/quickdraw/simplified-25 + zigzag",
                "sha256": {},
                "size": {},
                "notes": "sha256 unknown upstream: pinned on first download",
                "classes": classes,
            }
        },
    }
    write(registry)
    known = sum(1 for r in magenta.values() if r["files"][0]["sha256"])
    print(
        f"{REGISTRY}: {len(ours)} ours, {len(magenta)} Magenta ({known} with sha256), "
        f"{len(classes)} QuickDraw classes"
    )


def publish(model_dir: Path, tag: str, stage: Path) -> None:
    """Add an exported model directory as release assets `<name>.<file>` under `tag`, copy them
    into `stage` for upload, and record their SHA-256 and size."""
    loaded = ModelInfo.load(model_dir)
    info = json.loads(loaded.to_json())
    name = info["name"]
    stage.mkdir(parents=True, exist_ok=True)
    files = []
    for path in [model_dir / "model.json", *(model_dir / f for f in info["files"].values())]:
        asset = f"{name}.{path.name}"
        shutil.copyfile(path, stage / asset)
        files.append(
            {
                "url": RELEASE_URL.format(tag=tag, asset=asset),
                "name": asset,
                "path": path.name,
                "sha256": sha256(path),
                "size": path.stat().st_size,
            }
        )
    registry = json.loads(REGISTRY.read_text())
    old = registry["models"].get(name, {})
    registry["models"][name] = {
        "dims": info["dims"],
        **{k: info[k] for k in PREPROCESSING},
        "format": "sketchkit-onnx",
        "origin": "sketchkit",
        "license": info["license"],
        "dataset": old.get("dataset", ""),
        "metrics": info["metrics"],
        "notes": f"release {tag}",
        **({"shipped": old["shipped"]} if "shipped" in old else {}),
        "files": files,
    }
    write(registry)
    print(f"{name}: {len(files)} files staged in {stage}; upload them to release {tag}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    pub = sub.add_parser("publish", help="add an exported model directory as release assets")
    pub.add_argument("model_dir", type=Path)
    pub.add_argument("--tag", required=True)
    pub.add_argument("--stage", type=Path, default=Path("dist/release"))
    args = p.parse_args(argv)
    if args.cmd == "publish":
        publish(args.model_dir, args.tag, args.stage)
    else:
        if not (SHARED / "magenta-gen").is_dir():
            sys.exit(f"{SHARED} is absent: regenerate where shared/data is")
        regenerate()


if __name__ == "__main__":
    main()
