"""A tiny RT-DETR for CPU tests and the CPU demo: R18 backbone, narrow encoder/decoder, 2 layers.

Not an official size: same architecture, smaller widths (hidden 64, 50 queries, 2 decoder layers).
"""

from .rtdetr_r18 import model

model.encoder.hidden_dim = 64
model.encoder.dim_feedforward = 128
model.encoder.nhead = 4
model.decoder.hidden_dim = 64
model.decoder.dim_feedforward = 128
model.decoder.nhead = 4
model.decoder.num_queries = 50
model.decoder.num_layers = 2
model.decoder.num_denoising = 20
model.num_top_queries = 50
