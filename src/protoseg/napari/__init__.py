"""napari integration (reader, sample data, widgets): the only package that imports napari or Qt."""
