"""Files on disk: atomic writes (`atomic`) and every tensor file read or written (`tensors`)."""
