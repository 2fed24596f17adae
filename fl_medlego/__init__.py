"""fl-medlego: assemble a generalist medical image model from specialist SVD-LoRA sites.

Data flows one way: a site's images -> local training of its kind's update (`fl_medlego.kinds`: an
SVD-LoRA adapter by default, `fl_medlego.lora`, `fl_medlego.train`) -> that update on the wire
(`fl_medlego.wire`) -> combined on the server (for adapters: a registered merge, `fl_medlego.merging`)
-> back to the sites. Flower glue lives in `fl_medlego.clients` (a site) and `fl_medlego.server`
(the coordinator); the command line in `fl_medlego.cli`, above both.
"""

__version__ = "0.1.0"
