"""Regenerate tests/data/easyr1_config_keys_<ref>.json from an EasyR1 checkout.

    EASYR1_SRC=/path/to/EasyR1 python -m tests.make_easyr1_config_keys --ref b44b311

The file lists every key EasyR1's ``PPOConfig`` accepts (from its dataclasses) and the
``trainer.logger`` names its tracker knows (``verl.utils.logger.logger.LOGGERS``), so the preset
tests can check our YAML without EasyR1 installed. ``--ref`` names the commit or tag of the
checkout (written into the file; a plain source tree has no git metadata to read it from).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tests.easyr1_support import config_keys, import_easyr1, load_easyr1

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.environ.get("EASYR1_SRC"), help="EasyR1 checkout (default $EASYR1_SRC)")
    parser.add_argument("--ref", required=True, help="commit or tag of the checkout, e.g. b44b311")
    args = parser.parse_args()
    if not args.src:
        parser.error("give --src or set EASYR1_SRC")
    root = Path(args.src).resolve()
    module = load_easyr1(root)
    out = DATA / f"easyr1_config_keys_{args.ref}.json"
    payload = {
        "easyr1_ref": args.ref,
        "source": "verl/trainer/config.py PPOConfig and the worker config dataclasses it nests; "
        "verl/utils/logger/logger.py LOGGERS",
        "generator": "python -m tests.make_easyr1_config_keys",
        **config_keys(module.PPOConfig),
        "loggers": sorted(import_easyr1("verl.utils.logger.logger", root).LOGGERS),
    }
    out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {len(payload['keys'])} keys")


if __name__ == "__main__":
    main()
