"""TensorRT without torch: the versions targeted, the ONNX parser check, build presets and plans,
the trtexec line, building and opening engines. TensorRT itself is imported only to build or open."""
