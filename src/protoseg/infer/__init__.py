"""protoseg.infer"""
