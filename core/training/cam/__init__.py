"""The weakly supervised CAM pipeline's training parts, one module per step:

images/features (inputs), dfc (classifier training), contrastive (CLM), guided_crop (GCM),
inpainting (IEM), crf (dense CRF), pseudo_masks (CAM -> IEM -> CRF), segmenter_training (the
distilled network). core.training.cam_trainer runs them in order.
"""
