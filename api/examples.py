"""Request-body examples for the OpenAPI document (`openapi_examples`: /docs offers each one as
a ready request). The JSON ones are valid requests (tests/api/test_api_conventions.py checks
them against their models); ids are of the shape the service returns."""

from __future__ import annotations

from typing import Any

from core.models import FILE_PURPOSES

Examples = dict[str, dict[str, Any]]
BASE = "file-3f9a1c0e5b7d2a4c6e8f0a1b"
CARS, DTD = "file-8c2e4a6b0d1f3e5a7c9b2d4f", "file-1d3b5f7a9c0e2b4d6f8a0c2e"
CARS_IMAGES, DTD_IMAGES = "file-5e7c9a1b3d0f2a4c6e8b0d1f", "file-b2d4f6a8c0e1d3b5f7a9c2e4"
TASKS = [
    {"name": "cars", "checkpoint": CARS, "unlabeled": CARS_IMAGES,
     "classnames": ["sedan", "suv", "pickup truck"]},
    {"name": "dtd", "checkpoint": DTD, "unlabeled": DTD_IMAGES,
     "classnames": ["banded", "blotchy", "braided"], "templates": ["a photo of a {} texture."]},
]  # fmt: skip
MODEL = {"arch": "ViT-B-32", "checkpoint": BASE}

MERGE: Examples = {
    "calm": {
        "summary": "CALM over two tasks",
        "description": "Every id is a File of yours: checkpoints (`purpose=checkpoint`) and "
        "unlabeled images (`purpose=dataset`). Unset options take their defaults.",
        "value": {"model": MODEL, "tasks": TASKS, "method": "calm",
                  "options": {"num_sequential": 1, "epochs": 50}, "baselines": ["task_arithmetic"],
                  "seed": 0, "metadata": {"project": "vision", "owner": "ann"}},
    },
    "ties": {
        "summary": "Another method, with its own options",
        "value": {"model": MODEL, "tasks": TASKS, "method": "ties",
                  "options": {"density": 0.2}, "evaluate": True},
    },
    "dry_run": {
        "summary": "Validate only: the resolved plan, no job (200)",
        "value": {"model": MODEL, "tasks": TASKS, "dry_run": True},
    },
}  # fmt: skip

UPLOAD_CREATE: Examples = {
    "checkpoint": {
        "summary": "A large checkpoint, in parts",
        "value": {"filename": "vit-b-32-cars.safetensors", "purpose": "checkpoint", "bytes": 605_247_112,
                  "sha256": "9f2c" + "0" * 60},
    },
    "dataset": {
        "summary": "A zip of unlabeled images (no checksum)",
        "value": {"filename": "cars-unlabeled.zip", "purpose": "dataset", "bytes": 1_073_741_824},
    },
}  # fmt: skip

UPLOAD_COMPLETE: Examples = {
    "all": {"summary": "Join every part received, in order", "value": {}},
    "chosen": {"summary": "Join these parts, in this order", "value": {"part_numbers": [1, 2, 3]}},
}

FILE_MULTIPART: Examples = {
    "checkpoint": {
        "summary": "A checkpoint as a form upload",
        "description": "`file` is the file's bytes (with its name); `purpose` one of "
        f"{', '.join(FILE_PURPOSES)}.",
        "value": {"file": "base.safetensors (bytes)", "purpose": "checkpoint"},
    },
}
FILE_RAW: Examples = {
    "checkpoint": {
        "summary": "The raw bytes, with ?purpose=checkpoint&filename=base.safetensors",
        "value": "(the bytes of base.safetensors)",
    },
}
PART_RAW: Examples = {
    "part": {
        "summary": "Part 1: the file's first `part_size` bytes",
        "value": "(bytes 0 .. part_size-1 of the file)",
    },
}
