"""Few-shot talking heads (Zakharov et al. 2019, DESIGN §4.4).

    config.py           the typed config and presets (tiny, cpu128, paper256)
    landmark_raster.py  the landmark image over batches (the one drawing: contract/landmark_image.py)
    residual_blocks.py  residual down/up blocks, AdaIN, self-attention, the image-and-landmarks trunk
    embedder.py, generator.py, discriminator.py   E, G (ψ = P·ê), the projection discriminator
    personal.py         a fine-tuned person as served: the generator with ψ' fixed, the ARKit path's puppet landmarks
    export_personal.py  writes a personal model (ONNX graphs and card)
    preview.py          a personal model driven by held-out synthetic performers (a contact sheet)
    avatar_model.py     the few-shot model in the reenactment benchmark (models/evaluation.py)
Training lives in models/training/ (train_fewshot_meta.py, finetune_fewshot.py, fewshot_objective.py)."""
