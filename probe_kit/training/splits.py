"""Split settings shared by every trainer; torch-free, so option parsers can read them cheaply."""

SPLIT_GAP = 0.05
"""Default gap between contiguous blocks of one sequence, as a share of its images (at least one image).

Adjacent video frames show the same people in nearly the same places, so without a gap the first
early-stopping or scored frames are near-copies of the last training frames. 5% of a MOT17 sequence
is 26-53 frames, 1-2 s of video at 25-30 fps; the dropped frames train and score nothing."""
