"""protoseg.train"""
