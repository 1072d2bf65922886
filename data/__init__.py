"""Statement and calibration data."""
