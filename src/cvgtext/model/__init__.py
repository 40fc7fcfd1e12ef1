"""The models: ``module`` (the LightningModule), ``family`` (what every backbone family gives a
run), ``encoder`` (open_clip's CLIP, Long-CLIP and SigLIP), ``blip`` and ``vilt`` (transformers'
BLIP and ViLT), ``weights``, ``positional`` and ``convert_weights`` (weights into models),
``official`` (the official CrossText2Loc checkpoints by name), ``text_context`` (text encoded on
the positions used), ``loss``, ``relevance`` and ``faithfulness`` (relevance maps and how
faithful they are), and ``build`` (the module for a checkpoint or zero-shot weights)."""
