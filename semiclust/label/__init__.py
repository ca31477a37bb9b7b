"""Which images to label (`semiclust label suggest`): the selection rules (select.py), the suggestion list and its
provenance (lists.py), the features of a run's images (features.py), the contact sheet (sheet.py) and the command's
story (suggest.py). Nothing is imported here, so that the pure rules load without torch's data stack."""
