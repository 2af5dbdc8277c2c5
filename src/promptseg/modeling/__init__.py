"""The networks: CLIPSeg (pretrained or small), the text-conditioned U-Net, their registry, precision."""
