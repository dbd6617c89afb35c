"""nmkit.stats"""
