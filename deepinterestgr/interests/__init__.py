"""Deep-interest mining (MLIM) and reward labels (RLDI): prompts, parsing, merging, the label classifier."""
