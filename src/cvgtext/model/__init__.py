"""The dual encoder (open_clip), its positional-embedding resizing and the contrastive loss."""
