"""protoseg.napari"""
