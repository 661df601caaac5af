"""protoseg.models"""
