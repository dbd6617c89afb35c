"""nmkit.catalog"""
