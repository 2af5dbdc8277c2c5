"""Inference: one Segmenter (torch or ONNX engine) and one Recipe; native, tiled or plain, decided once."""
