"""Export the policy of a run checkpoint as a full model folder (``save_pretrained`` + tokenizer).

For a LoRA run, the checkpoint holds only the adapters: the base model is rebuilt from the
checkpoint's own ``model_spec`` (the run's ``name_or_path`` / ``gguf_file``; it must still be
reachable), the adapters are merged into its weights and the result is saved as a plain model
that ``from_pretrained`` (or vLLM) loads without peft. A full fine-tuning checkpoint is exported
as is.

    python scripts/export_merged.py runs/math_lora/version_0/checkpoints/last.ckpt exported/math_lora
"""

from __future__ import annotations

import argparse
import sys

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import export_merged


def main() -> None:
    parser = argparse.ArgumentParser(description="Write merged full weights from a lightning_dsrl run checkpoint.")
    parser.add_argument("checkpoint", help="a run checkpoint, e.g. runs/<name>/version_<n>/checkpoints/last.ckpt")
    parser.add_argument("out_dir", help="folder to write config.json, the weights and the tokenizer into")
    args = parser.parse_args()
    try:
        out = export_merged(args.checkpoint, args.out_dir)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
