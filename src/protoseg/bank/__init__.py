"""protoseg.bank"""
