"""Training, calibration and evaluation of the head and its thresholds."""
