"""INT8: calibration images in the quantizers' layouts, and Q/DQ quantization of a float graph."""
