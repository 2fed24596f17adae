"""A hospital's own images as a site's data: folders, CSV manifests and DICOM files.

Listing a dataset (`sources`), decoding its files (`decode`), splitting it once by patient (`splits`),
checking it locally (`check`), registering it at the node (`registry`) and decoding it once into a
node-local cache (`cache`). Nothing here sends anything anywhere: what leaves the site is decided by
`fl_medlego.site`.
"""
