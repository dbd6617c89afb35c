"""nmkit.radiomics"""
