"""Stage 2, image bytes or arrays -> augmented views, pure (numpy / PIL / torch, no Ray): crop geometry on the
original image, byte decoding at a reduced size, whole-batch tensor views (crop, flip, photometric ops),
views of encoded rows, the GPU path, and the evaluation transform. Imports raysl.config only.
"""
