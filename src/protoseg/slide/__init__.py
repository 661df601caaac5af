"""protoseg.slide"""
