"""protoseg.losses"""
