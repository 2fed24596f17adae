"""fl-medlego: assemble a generalist medical image model from specialist SVD-LoRA sites.

Data flows one way: a site's images -> local training of an SVD-LoRA adapter (`fl_medlego.lora`,
`fl_medlego.train`) -> low-rank factors on the wire (`fl_medlego.wire`) -> a registered merge
(`fl_medlego.merging`) -> merged factors back to the sites. Flower glue lives in
`fl_medlego.clients` (a site) and `fl_medlego.server` (the coordinator).
"""

__version__ = "0.1.0"
