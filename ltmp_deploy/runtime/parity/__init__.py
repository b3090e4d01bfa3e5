"""Parity: one comparator and one set of gates, and validating graphs and engines against an ONNX graph."""
