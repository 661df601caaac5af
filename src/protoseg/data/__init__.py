"""protoseg.data"""
