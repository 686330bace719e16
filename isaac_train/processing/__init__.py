"""Processing: TensorStream, image processor, IsaacProcessor."""
