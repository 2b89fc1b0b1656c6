"""int8 post-training quantization: calibration (statistics only) and the QDQ rewrite."""
