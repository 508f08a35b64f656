"""How often a package's mask refinement erases a whole finding, on good and on defect images of a split.

    .venv/bin/python benchmarks/mask_refinement_erasures.py MODEL_DIR DATASET [--split test]

For every image: the raw mask (the thresholded map) and the refined one (the dense CRF, without the NG
fallback of core.inference.detector). Prints, as JSON: how many good images had a raw finding and how many
of those the CRF erased (false alarms cleared), how many defect images it erased and their raw IoU, and the
mIoU of the defect images raw, refined, and refined with the raw mask kept on erased NG images (the default).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from core.data.dataset import open_dataset
from core.inference.detector import Detector
from core.inference.mask_refinement import refined_mask
from core.inference.result import Verdict
from core.metrics import iou


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    args = parser.parse_args(argv)
    raw_detector = Detector.load(args.model, device="cpu", refine_masks=False)
    if raw_detector.package.mask_refinement is None:
        parser.error(f"{args.model} has no mask refinement")
    threshold = raw_detector.thresholds.pixel
    refinement = raw_detector.package.mask_refinement
    good = {"images": 0, "raw_finding": 0, "erased": 0}
    defect = {"images": 0, "raw_finding": 0, "erased": 0, "erased_raw_iou": [], "erased_types": []}
    ious = {"raw": [], "refined": [], "default": []}
    for sample in open_dataset(args.dataset).split(args.split):
        image, truth = sample.load()
        scores, maps = raw_detector.infer([image])
        result = raw_detector.postprocess([image], scores, maps)[0]
        if result.mask.any():
            refined = refined_mask(refinement, image, maps[0], threshold, result.anomaly_map)
        else:
            refined = result.mask
        erased = bool(result.mask.any() and not refined.any())
        if sample.label == 0:
            good["images"] += 1
            good["raw_finding"] += int(result.mask.any())
            good["erased"] += int(erased)
            continue
        if truth is None:
            continue
        defect["images"] += 1
        defect["raw_finding"] += int(result.mask.any())
        if erased:
            defect["erased"] += 1
            defect["erased_raw_iou"].append(round(iou(result.mask, truth), 3))
            defect["erased_types"].append(sample.defect_type)
        ious["raw"].append(iou(result.mask, truth))
        ious["refined"].append(iou(refined, truth))
        keep_raw = erased and result.verdict is Verdict.NG
        ious["default"].append(iou(result.mask if keep_raw else refined, truth))
    report = {"model": args.model, "split": args.split, "good": good, "defect": defect,
              "miou": {name: round(float(np.mean(values)), 4) for name, values in ious.items()}}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
