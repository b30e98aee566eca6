"""Build step of the `ml` image: ResNet50's ImageNet weights into the torch cache (TORCH_HOME).

    python resnet50_weights.py imagenet|none FOLDER

`imagenet`: when FOLDER holds the file torchvision names (resnet50-11ad3fa6.pth, for a build with
no network: put it in deploy/docker/), it is checked the way torch.hub checks a download (the
name's hash prefix against its SHA-256) and copied into the cache; otherwise torchvision downloads
it with `get_state_dict(check_hash=True)`. Either way the weights then load as a state dict, so
a pod embeds with `POSTFLOW_IMAGE_WEIGHTS=imagenet` and never downloads at run time.
`none`: nothing is fetched (the image embeds with random weights, tagged so; test stacks only).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    mode, folder = argv[0], Path(argv[1])
    if mode == "none":
        print("resnet50 weights: none (random weights at run time; not for production)")
        return 0
    if mode != "imagenet":
        print(f"RESNET50_WEIGHTS must be imagenet or none, not {mode!r}", file=sys.stderr)
        return 2
    import torch
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V2
    name = os.path.basename(weights.url)
    local = folder / name
    if local.is_file():
        prefix = re.search(torch.hub.HASH_REGEX, name).group(1)
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        if not digest.startswith(prefix):
            print(f"{local}: sha256 {digest} does not start with {prefix}", file=sys.stderr)
            return 1
        target = Path(torch.hub.get_dir()) / "checkpoints" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    state = weights.get_state_dict(progress=False, check_hash=True)  # downloads when not cached
    print(f"resnet50 weights: {name}, {len(state)} tensors in {torch.hub.get_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
